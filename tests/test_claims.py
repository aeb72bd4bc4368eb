"""`unipt-bench claims`: records read and checked, ratios measured from the runs, verdicts within 15%."""

from __future__ import annotations

import pytest

from unipt_bench.claims import builtin_claims_dir, read_claims, verdict
from unipt_bench.errors import UserError

from .test_bad_inputs import invoke

SUITE = """name = "claims-tiny"
[[configs]]
name = "c"
batch = 2
steps = 1
towers = [{ name = "text", backbone = "tiny-bert", seq_len = 4 }, { name = "image", backbone = "tiny-regions", tuned = false }]
methods = ["bitfit", { method = "bitfit", label = "bitfit-again" }]
"""


def record(claimed: float, **fields: str) -> str:
    values = {"source": "a paper", "table": "Table 9", "setting": "tiny", "claim": "as much memory",
              "metric": "peak", "suite": "suites/tiny.toml", "config": "c", "numerator": "bitfit",
              "denominator": "bitfit-again", **fields}
    return "".join(f'{k} = "{v}"\n' for k, v in values.items()) + f"claimed = {claimed}\n"


def test_the_built_in_claims_are_at_least_twelve_well_formed_records() -> None:
    claims = read_claims(builtin_claims_dir())
    assert len(claims) >= 12
    assert all(c.claimed > 0 and c.numerator != c.denominator for c in claims)


def test_the_verdict_is_reproduced_within_15_percent_only() -> None:
    assert verdict(0.5, 0.574) == "reproduced" and verdict(0.5, 0.426) == "reproduced"
    assert verdict(0.5, 0.58) == "not reproduced" and verdict(0.5, 0.42) == "not reproduced"


def test_claims_measure_the_ratio_of_the_two_runs_and_give_verdicts(tmp_path, monkeypatch, capsys) -> None:
    """Two identical runs under two labels: the measured ratio is exactly 1, so a claimed 1.1 is reproduced
    and a claimed 2 is not (with the measured figure); the shared run is measured once."""
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "tiny.toml").write_text(SUITE)
    (tmp_path / "close.toml").write_text(record(1.1))
    (tmp_path / "far.toml").write_text(record(2))
    code, out, err = invoke(["claims", "--claims", str(tmp_path)], monkeypatch, capsys)
    assert code == 0, err
    assert "close: a paper, Table 9: peak, bitfit / bitfit-again claimed 1.10, measured 1.00: reproduced" in out
    assert "far: a paper, Table 9: peak, bitfit / bitfit-again claimed 2.00, measured 1.00: not reproduced" in out
    assert "1 of 2 claims reproduced within 15%" in out
    assert err.count("measuring") == 2  # each distinct run once, not once per claim


@pytest.mark.parametrize(("text", "message"), [
    (record(0.5, metric="speed"), "metric must be one of peak, activations"),
    (record(0.5).replace('table = "Table 9"\n', ""), "field table must be a str"),
    (record(0.5) + "extra = 1\n", "unknown field(s) extra"),
    (record(0.5, numerator="nowhere"), "suite suites/tiny.toml has no run c/nowhere"),
])
def test_a_bad_claim_record_is_one_line_naming_the_field(tmp_path, monkeypatch, capsys, text, message) -> None:
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "tiny.toml").write_text(SUITE)
    (tmp_path / "bad.toml").write_text(text)
    code, _, err = invoke(["claims", "--claims", str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_a_missing_claims_folder_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError, match="no claims folder"):
        read_claims(tmp_path / "nowhere")
