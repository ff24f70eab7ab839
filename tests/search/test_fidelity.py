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
