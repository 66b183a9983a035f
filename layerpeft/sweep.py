"""End-of-sweep summary (a Hydra callback): which jobs failed, and the sweep's table.

``FAILED`` collects the run directories of this process's sweep whose job failed or diverged
(the jobs record it, the summary adds what it finds in the sweep directory), so that
``layerpeft train -m`` exits non-zero after its summary when any job did: scripts and CI see it.
"""

from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from layerpeft.report.tables import collect_runs, csv_text, markdown, table_rows

FAILED: list[str] = []


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        runs = collect_runs([sweep_dir])
        failed = [r for r in runs if r.metrics.get("status") != "ok"]
        FAILED.extend(str(r.path) for r in failed if str(r.path) not in FAILED)
        if runs:
            header, rows = table_rows(runs)
            (sweep_dir / "report.md").write_text(markdown(header, rows) + "\n")
            (sweep_dir / "report.csv").write_text(csv_text(header, rows))
        print(f"sweep {sweep_dir}: {len(runs) - len(failed)} of {len(runs)} jobs succeeded")
        for r in failed:
            print(f"  {r.metrics.get('status', 'failed').upper()} {r.label}: {r.metrics.get('error')}")
