"""The files a study writes next to its runs, from records wherever they came from.

`write_outputs` turns run records into ``results.csv``, the PNG plots and
``report.md`` (and optionally the W&B summary run). The sweep and
``normlab.compare`` both call it, so compare reproduces the sweep's table.
``study.json`` records which study file made a directory, for compare to reload.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

from normlab.studies import plots, report
from normlab.studies.results import RunRecord, Table, write_csv
from normlab.studies.study import Study

STUDY_FILE = 'study.json'


@dataclasses.dataclass
class Outputs:
    table: Table
    report_text: str
    tables_text: str
    findings: list[str]
    plot_paths: list[str]


def write_outputs(study: Study, records: Sequence[RunRecord], outdir: str) -> Outputs:
    os.makedirs(outdir, exist_ok=True)
    write_csv(os.path.join(outdir, 'results.csv'), study, records)
    table = Table(study, records)
    paths = plots.plot_table(table, outdir)
    if study.report.plots is not None:
        paths += list(study.report.plots(records, outdir))
    found = report.findings(table)
    text = report.render(table, records, paths, found)
    with open(os.path.join(outdir, 'report.md'), 'w') as f:
        f.write(text)
    return Outputs(table, text, report.tables_markdown(table), found, paths)


def write_study_file(study: Study, workdir: str) -> None:
    with open(os.path.join(workdir, STUDY_FILE), 'w') as f:
        json.dump({'name': study.name, 'source': study.source}, f, indent=2)
        f.write('\n')


def read_study_source(workdir: str) -> str | None:
    path = os.path.join(workdir, STUDY_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)['source']
