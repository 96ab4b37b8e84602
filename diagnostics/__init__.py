"""domaingap.diagnostics — measure a domain gap and audit an adaptation."""
