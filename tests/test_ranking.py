"""The run the audit judges: the label-free selector's first, with the oracle rank beside it."""
from __future__ import annotations

from diagnostics.ranking import rank_runs, selection_score


def _sel(epoch_scores, chosen):
    return {"selected_epoch": chosen, "epochs": [{"epoch": e, "im": v, "snd": -v} for e, v in epoch_scores]}


def test_selected_epoch_score_is_what_ranks():
    s = _sel([(1, 0.2), (2, 0.9), (3, 0.5)], chosen=3)
    assert selection_score(s, "im") == 0.5 and selection_score(s, "snd") == -0.5
    assert selection_score(None, "im") is None


def test_rank_by_label_free_score_with_oracle_rank():
    sel = {"adabn": _sel([(0, 0.37)], 0), "dann+hist": _sel([(4, 0.54)], 4), "fda": None}
    acc = {"adabn": 0.90, "dann+hist": 0.894, "fda": 0.95}
    ranking = rank_runs(sel, "im", acc)
    assert [r["run"] for r in ranking] == ["dann+hist", "adabn", "fda"]  # unscored last
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    assert {r["run"]: r["oracle_rank"] for r in ranking} == {"fda": 1, "adabn": 2, "dann+hist": 3}
    # without target labels there is no oracle
    assert all(r["oracle_rank"] is None for r in rank_runs(sel, "im", None))


def test_methods_table_marks_the_recommended_and_audited_run():
    from types import SimpleNamespace

    from domaingap.run_audit import methods_rows

    table = [{"model": "source-only"}, {"model": "adabn"}, {"model": "dann+hist"}]
    ranking = [{"run": "dann+hist", "score": 0.5, "rank": 1, "oracle_rank": 2},
               {"run": "adabn", "score": 0.4, "rank": 2, "oracle_rank": 1}]
    recipe = SimpleNamespace(seed=0, method=SimpleNamespace(selection="im"))
    rows = {r["model"]: r for r in methods_rows(table, ranking, "dann+hist", recipe)}
    assert rows["dann+hist"]["audit"] == "★ recommended, audited" and rows["dann+hist"]["label_free_rank"] == 1
    assert rows["adabn"]["audit"] is None and rows["adabn"]["oracle_rank"] == 1
    assert "label_free_rank" not in rows["source-only"]
    # method.audit_run names another run: it is audited, the recommendation still shows
    rows = {r["model"]: r for r in methods_rows(table, ranking, "adabn", recipe)}
    assert rows["adabn"]["audit"] == "audited" and rows["dann+hist"]["audit"] == "★ recommended"


def test_the_estimate_ranking_can_recommend_the_source_model():
    # method.deploy: estimate ranks the source model too; when it comes first it is the
    # recommended (deployed) model and the best-ranked run is the one audited beside it
    from types import SimpleNamespace

    from diagnostics.ranking import EstimateRanking
    from domaingap.run_audit import _ranking_rows, methods_rows

    acc = {"source-only": 0.90, "adabn": 0.80, "dann": 0.60}
    st = lambda n: SimpleNamespace(metrics={"target_test": {"accuracy": acc[n]}}, selection=None)  # noqa: E731
    summary = SimpleNamespace(source=st("source-only"), runs={"adabn": st("adabn"), "dann": st("dann")})
    r = EstimateRanking(["source-only", "dann", "adabn"], "cot", "agreement",
                        {"source-only": {"cot": 0.8, "agreement": 0.7}, "dann": {"cot": 0.7, "agreement": 0.6},
                         "adabn": {"cot": 0.6, "agreement": 0.7}}, 100)
    recipe = SimpleNamespace(seed=0, method=SimpleNamespace(selection="im"))
    ranking = _ranking_rows(summary, recipe, SimpleNamespace(ranking=r))
    assert [(x["run"], x["rank"], x["oracle_rank"], x["score"]) for x in ranking] == [
        ("source-only", 1, 1, 0.8), ("dann", 2, 3, 0.7), ("adabn", 3, 2, 0.6)]
    table = [{"model": "source-only"}, {"model": "adabn"}, {"model": "dann"}]
    rows = {x["model"]: x for x in methods_rows(table, ranking, "dann", recipe)}
    assert rows["source-only"]["audit"] == "★ recommended" and rows["dann"]["audit"] == "audited"
    assert rows["adabn"]["label_free_rank"] == 3 and rows["adabn"]["oracle_rank"] == 2
