"""`coinfer report` and `show` for the quality files: a robustness profile, a perplexity report."""

from __future__ import annotations

from coinfer.cli.main import main
from coinfer.planner.synthetic import synthetic_robustness
from coinfer.reports.io import write_json
from coinfer.viz import quality_figs


def test_robustness_picture_has_a_line_and_a_band_per_cut():
    p = synthetic_robustness(6, cuts=[2, 4, 7], erasure=(0.05, 0.1, 0.3), snr_db=(20, 10, 0), draws=4, seed=1)
    pic = quality_figs.severity_picture(p, "erasure")
    ax = pic.figure.axes[0]
    assert [ln.get_label() for ln in ax.get_lines()] == [f"cut {c} ({n})" for c, n in
                                                         ((2, "block.0"), (4, "block.2"), (7, "block.5"))]
    assert len(ax.collections) == 3 and ax.get_yscale() == "log"
    line = ax.get_lines()[0]
    pts = sorted((pt for pt in p.points if pt.cut == 2 and pt.condition.impairment == "erasure"
                  and pt.condition.wire_dtype == "fp32"), key=lambda q: q.condition.erasure_p)
    assert list(line.get_xdata()) == [0.05, 0.1, 0.3]
    assert list(line.get_ydata()) == [q.perplexity_ratio.mean for q in pts]
    assert quality_figs.severity_picture(p, "awgn").figure.axes[0].xaxis_inverted()


def test_report_and_show_take_a_robustness_profile(tmp_path, capsys):
    p = synthetic_robustness(6, cuts=[2, 4], erasure=(0.1, 0.3), draws=3)
    write_json(p, tmp_path / "rob.json")
    assert main(["report", str(tmp_path / "rob.json"), "-o", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Channel robustness" in md and "figures/channel-erasure.png" in md
    assert main(["show", str(tmp_path / "rob.json")]) == 0
    out = capsys.readouterr().out
    assert "per cut and condition" in out and "fp32 erasure" in out
