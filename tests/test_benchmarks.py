"""The benchmarks run end to end (smoke only: no timing is checked)."""
import json
import os.path as osp

import pytest

from .conftest import ROOT, run_tool

RUN_ALL = osp.join(ROOT, 'benchmarks', 'run_all.sh')
CPU_RUNS = ('data', 'head', 'step', 'scaling')


@pytest.mark.slow
def test_run_all_quick_writes_every_table_and_json(tmp_path):
    proc = run_tool('bash', RUN_ALL, tmp_path, '--quick', timeout=900)
    assert 'all benchmarks done' in proc.stdout, proc.stdout[-3000:]
    for name in CPU_RUNS:
        out = (tmp_path / f'{name}.md').read_text()
        # a markdown table: a header row and its |---| separator
        lines = out.splitlines()
        seps = [i for i, line in enumerate(lines)
                if line.startswith('|-') and line.endswith('|')]
        assert seps, f'{name} printed no table:\n{out[-3000:]}'
        assert all(lines[i - 1].startswith('| ') for i in seps), out[-3000:]
        assert 'machine: ' in out and 'load before/after' in out, out[-3000:]
        results = json.loads((tmp_path / f'{name}.json').read_text())
        assert results['machine']['device'] == 'cpu', name


def test_run_all_reports_failures_and_exits_nonzero(tmp_path):
    # an interpreter that fails at once: every script fails, none is skipped
    proc = run_tool('bash', RUN_ALL, tmp_path, env={'PYTHON': 'false'},
                    check=False, timeout=60)
    assert proc.returncode == 1, proc.stdout
    assert f'failed: {" ".join(CPU_RUNS)}' in proc.stdout, proc.stdout


def test_run_all_only_runs_the_named_ones(tmp_path):
    proc = run_tool('bash', RUN_ALL, tmp_path, '--only', 'head,step',
                    env={'PYTHON': 'false'}, check=False, timeout=60)
    assert proc.returncode == 1, proc.stdout
    assert 'failed: head step (' in proc.stdout, proc.stdout
    assert '== data' not in proc.stdout, proc.stdout
    proc = run_tool('bash', RUN_ALL, tmp_path, '--only', 'head,stpe',
                    env={'PYTHON': 'false'}, check=False, timeout=60)
    assert proc.returncode == 2, proc.stdout
    assert '--only: no run named stpe on cpu' in proc.stdout, proc.stdout
    # the typo stops it before anything runs, not after the known ones
    assert '== head' not in proc.stdout, proc.stdout


def test_run_all_refuses_unknown_options(tmp_path):
    proc = run_tool('bash', RUN_ALL, tmp_path, '--devcie', 'cuda',
                    check=False, timeout=60)
    assert proc.returncode == 2 and 'usage:' in proc.stdout, proc.stdout


def test_step_refuses_amp_on_a_cpu():
    """MMEngine's AmpOptimWrapper cannot be built without a GPU: the
    benchmark says so before building any model."""
    proc = run_tool(osp.join(ROOT, 'benchmarks', 'bench_step.py'), '--amp',
                    check=False, timeout=120)
    assert proc.returncode == 2, proc.stdout
    assert '--amp needs --device cuda' in proc.stdout, proc.stdout


@pytest.mark.slow
def test_step_with_the_compiled_head(tmp_path):
    """``--compile-head`` adds a VTHCL model with ``head.compile=True``: its
    training steps run next to the eager ones and are reported. Dynamo is
    switched off here (``torch.compile`` then calls the function as it
    is): this checks the script's wiring without a minute of compiling;
    the compiled head itself is tested in test_contrast.py and
    test_train_e2e.py."""
    out = tmp_path / 'step.json'
    proc = run_tool(osp.join(ROOT, 'benchmarks', 'bench_step.py'), '--quick',
                    '--compile-head', '--json', out,
                    env={'TORCHDYNAMO_DISABLE': '1'}, timeout=900)
    assert 'VTHCL with the compiled head / stock x2' in proc.stdout, \
        proc.stdout[-3000:]
    times = json.loads(out.read_text())['times']
    assert set(times) == {'vthcl', 'stock', 'vthcl, compiled head'}
    assert all(len(v) == len(times['vthcl']) > 0 for v in times.values())
