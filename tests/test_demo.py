"""The demo end to end, shortened: broker, training, worker process, replay, summary."""

import io

from demo import run as demo


def test_short_demo_scores_every_window_and_detects_faults():
    out = io.StringIO()
    plan = demo.Plan(train_rows=900, run_rows=420, fault_start=240, speed=60.0, epochs=15)
    code = demo.main(out=out, plan=plan)
    text = out.getvalue()
    assert code == 0, text
    summary = text[text.index("summary") :]
    scored, sent = summary.split(" windows scored")[0].split()[-3::2]
    assert scored == sent
    detected = [line for line in summary.splitlines() if " detected " in line]
    assert len(detected) >= 3, text
    assert "http://127.0.0.1:" in summary
