"""The comparison table reads manifests and shows every suite with its settings and interval."""

from __future__ import annotations

from reports.compare import comparison_table


def _manifest(name: str, method: str, acc: float, robust: dict[str, float], adv: bool = False) -> dict:
    return {
        "name": name,
        "method": method,
        "sigma": {"mean": 0.5, "min": 0.25, "median": 0.5, "max": 0.75},
        "training": {"command": f"python -m training.train --method {method}"},
        "adversarial_training": {"kind": "fgsm", "eps": 0.1, "eot": 8} if adv else None,
        "metrics": {
            "clean": {"accuracy": acc, "accuracy_noise_free": acc, "noise_to_margin_median": 0.25, "samples": 32},
            "robust": {
                k: {
                    "robust_accuracy": v,
                    "robust_ci": [v - 0.02, v + 0.02],
                    "n": 100,
                    "judge": "strict",
                    "judge_samples": 64,
                    "square_n": None,
                    "attacks": [{"key": "apgd100_eot20_eps0.1"}, {"key": "square_q1000_eps0.1"}],
                }
                for k, v in robust.items()
            },
        },
    }


def test_table_rows_columns_and_settings() -> None:
    text = comparison_table(
        [
            _manifest("a_mfdv", "mfdv", 0.9123, {"standard_eps0.1": 0.705}, adv=True),
            _manifest("a_vanilla", "vanilla", 0.93, {}),
        ]
    )
    lines = text.splitlines()
    row = "| a_mfdv | mfdv | fgsm eps 0.1, EOT 8 | 91.23 | 91.23 | 0.25 / 0.5 / 0.75 | 0.25 | 70.5 [68.5, 72.5] |"
    assert row in lines
    assert "| a_vanilla | vanilla | - | 93.00 | 93.00 | 0.25 / 0.5 / 0.75 | 0.25 | - |" in lines
    assert any(
        line.startswith("- `standard_eps0.1`: worst case per input over `apgd100_eot20_eps0.1`, `square_q1000_eps0.1`")
        and "n=100" in line
        for line in lines
    )
    assert "`python -m training.train --method vanilla`" in text
