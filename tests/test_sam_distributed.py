"""Under torch.distributed every rank selects the same entries: the statistics are all-reduced before the top-k.

Two CPU processes (gloo over loopback) calibrate on different data; both must pick exactly the selection that one
process picks on the union of their batches.
"""

import json
import os
import subprocess
import sys
import textwrap

import common
import pytest
from peft import get_peft_model
from tiny_models import make_inputs, make_model

from peft_designspace import SAMTuningConfig, calibrate_sam

WORKER = textwrap.dedent(
    """
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import torch, torch.distributed as dist
    import peft_designspace
    from peft import get_peft_model
    from tiny_models import make_inputs, make_model

    rank = int(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method={init!r}, rank=rank, world_size=2)
    model = get_peft_model(make_model("bert", "SEQ_CLS"), peft_designspace.SAMTuningConfig(task_type="SEQ_CLS",
                                                                                          **{kwargs!r}))
    batches = [make_inputs("bert", "SEQ_CLS", seed=s) for s in {seeds!r}[rank]]
    peft_designspace.calibrate_sam(model, batches, show_progress=False)
    selection = {{k: v.tolist() for k, v in model.base_model.selection().items()}}
    with open({out!r} + str(rank), "w") as f:
        json.dump(selection, f)
    dist.destroy_process_group()
    """
)


@pytest.mark.parametrize("kwargs", [{"budget": 0.02}, {"budget": 0.02, "score": "fisher", "scope": "per_tensor"}])
def test_ranks_select_the_same_entries_as_one_process_on_all_data(tmp_path, kwargs):
    seeds = [[1, 2], [3, 4]]
    code = WORKER.format(
        tests=str(common.ROOT / "tests"),
        init=f"file://{tmp_path / 'rendezvous'}",
        kwargs=kwargs,
        seeds=seeds,
        out=str(tmp_path / "selection"),
    )
    env = {**os.environ, "PYTHONPATH": str(common.ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(r)], env=env, stderr=subprocess.PIPE, text=True)
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    ranks = [json.loads((tmp_path / f"selection{r}").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]

    model = get_peft_model(make_model("bert", "SEQ_CLS"), SAMTuningConfig(task_type="SEQ_CLS", **kwargs))
    calibrate_sam(model, [make_inputs("bert", "SEQ_CLS", seed=s) for s in seeds[0] + seeds[1]], show_progress=False)
    single = {k: v.tolist() for k, v in model.base_model.selection().items()}
    differing = [k for k in single if single[k] != ranks[0][k]]
    assert not differing, differing[:3]
    assert sum(len(v) for v in single.values()) == sum(len(v) for v in ranks[0].values()) > 0
