"""The benchmark scripts run end to end (smoke only: no timing is checked)."""
import os.path as osp

import pytest

from .conftest import ROOT, run_tool

SCRIPTS = ('bench_data.py', 'bench_head.py', 'bench_step.py',
           'bench_scaling.py')


@pytest.mark.slow
def test_benchmarks_quick_runs_print_tables():
    for script in SCRIPTS:
        proc = run_tool(osp.join(ROOT, 'benchmarks', script), '--quick',
                        timeout=600)
        out = proc.stdout
        assert proc.returncode == 0
        # a markdown table: a header row and its |---| separator
        lines = out.splitlines()
        seps = [i for i, line in enumerate(lines)
                if line.startswith('|-') and line.endswith('|')]
        assert seps, f'{script} printed no table:\n{out[-3000:]}'
        assert all(lines[i - 1].startswith('| ') for i in seps), out[-3000:]
        assert 'machine: ' in out and 'load before/after' in out, out[-3000:]
