"""The comparison table reads manifests and shows every attack with its settings."""

from __future__ import annotations

from training.compare import comparison_table


def _manifest(name: str, method: str, acc: float, robust: dict[str, float]) -> dict:
    return {
        "name": name,
        "method": method,
        "sigma": {"mean": 0.5},
        "training": {"command": f"python -m training.train --method {method}"},
        "metrics": {
            "clean": {"accuracy": acc, "accuracy_noise_free": acc, "noise_to_margin_median": 0.25},
            "robust": {
                k: {
                    "accuracy": v,
                    "attack": {"name": "pgd", "eps": 0.1, "steps": 20, "eot": 16},
                    "n": 100,
                    "judged_with_samples": 32,
                    "seed": 0,
                }
                for k, v in robust.items()
            },
        },
    }


def test_table_rows_columns_and_settings() -> None:
    text = comparison_table(
        [
            _manifest("a_mfdv", "mfdv", 0.9123, {"pgd20_eot16_eps0.1": 0.105}),
            _manifest("a_vanilla", "vanilla", 0.93, {}),
        ]
    )
    lines = text.splitlines()
    assert "| a_mfdv | mfdv | 91.23 | 91.23 | 0.5 | 0.25 | 10.50 |" in lines
    assert "| a_vanilla | vanilla | 93.00 | 93.00 | 0.5 | 0.25 | - |" in lines
    assert any(line.startswith("- `pgd20_eot16_eps0.1`: pgd (eps=0.1, steps=20, eot=16); n=100") for line in lines)
    assert "`python -m training.train --method vanilla`" in text
