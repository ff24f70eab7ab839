"""Promotion from rung 0 to full fidelity."""

from __future__ import annotations

import optuna


def test_promotion_rule() -> None:
    from types import SimpleNamespace

    from yolotune.search._fidelity import promote

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.35, 12.0, 10.0], user_attrs={"reference": "fp32"}))
    study.add_trial(optuna.trial.create_trial(values=[0.34, 3.5, 7.0]))

    def rung0(m: float, size: float, ms: float) -> SimpleNamespace:
        return SimpleNamespace(
            size_mb=size, latency=SimpleNamespace(median_ms=ms), accuracy=SimpleNamespace(map50_95=m)
        )

    assert not promote(study, rung0(0.30, 4.0, 8.0), 0.02)  # bigger, slower and 0.04 worse than a full trial
    assert promote(study, rung0(0.33, 4.0, 8.0), 0.02)  # within the margin: fine-tuning may close it
    assert promote(study, rung0(0.0, 1.0, 3.0), 0.02)  # destroyed but the smallest: on the front
    study.set_user_attr("constraints", {"max_map_drop": 0.05, "max_latency_ms": None})
    assert not promote(study, rung0(0.0, 1.0, 3.0), 0.02)  # ... unless a constraint rules it out
    assert promote(study, rung0(0.29, 1.0, 3.0), 0.02)  # 0.06 below fp32, within drop + margin


def test_rung0_verdict_says_what_is_out_of_reach_what_is_promoted_on_size_and_what_is_timed() -> None:
    from types import SimpleNamespace

    from yolotune.search import SearchConfig
    from yolotune.search._fidelity import PROMOTED_ON_SIZE, judge_rung0

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.35, 12.0, 10.0], user_attrs={"reference": "fp32"}))
    study.add_trial(optuna.trial.create_trial(values=[0.34, 3.5, 7.0]))
    study.set_user_attr("constraints", {"max_map_drop": 0.05, "max_latency_ms": None})
    config = SearchConfig(model="m.pt", data="coco8", budget=4, multi_fidelity=True, max_map_drop=0.05)

    def built(m: float, size_mb: float, unquantized: str = "") -> SimpleNamespace:
        accuracy = SimpleNamespace(map50_95=m, map50=m * 1.4, images=4)
        return SimpleNamespace(accuracy=accuracy, size_bytes=int(size_mb * 1e6), unquantized=unquantized, stand_ins=())

    lost = judge_rung0(config, study, built(0.1, 1.0))  # under 0.35 - 0.05 by more than the 0.02 margin
    assert lost.unreachable == (
        "mAP50-95 0.100 is more than 0.02 under 0.300, the least --max-map-drop 0.05 allows (FP32 scores 0.350): "
        "not timed"
    )
    assert not lost.on_size and lost.record(built(0.1, 1.0), None)["not_timed"] == lost.unreachable
    alone = judge_rung0(config, study, built(0.33, 1.0))  # no full-fidelity trial this small: promoted untimed
    assert alone.on_size and not alone.unreachable
    assert alone.record(built(0.33, 1.0), None)["not_timed"] == PROMOTED_ON_SIZE
    contested = judge_rung0(config, study, built(0.31, 4.0))  # trial 1 is smaller and 0.03 better: timed, compared
    assert not contested.on_size and not contested.unreachable
    stopped = judge_rung0(config, study, built(0.33, 4.0, unquantized="its FP32 export scored 0.1"))
    assert stopped.unreachable == "its FP32 export scored 0.1: not quantized, not timed"
    assert stopped.shift == 0.0 and not stopped.estimated  # rung 0 validated every image: nothing shifted
