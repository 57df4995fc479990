"""The reliability campaign (docs/RELIABILITY.md) with small counts: every check must end
as it should, and the report must be written."""

from __future__ import annotations

from normgen.testing import reliability


def test_quick_campaign(tmp_path):
    out = tmp_path / "RELIABILITY.md"
    assert reliability.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "# Reliability" in text and "FAILED" not in text
    assert "processes build the same op at once" in text and "unwritable cache folder" in text
