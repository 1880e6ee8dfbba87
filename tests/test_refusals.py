"""The README's "What cifarlit refuses" table, row by row, through the command line: each bad input or crafted
file ends in one `error:` sentence with exit status 2, no traceback, and nothing from a file runs."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from cifarlit.cli import cli_main
from helpers import REPO, RunsCode

DEFAULT = str(REPO / "configs" / "default.yaml")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, pickle_root, folder_root, own_run) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("refusals")
    marker = root / "code-ran"
    ckpt = torch.load(own_run.ckpt, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["note"] = RunsCode(marker)
    torch.save(ckpt, root / "crafted.ckpt")
    torch.save({"layers.1.weight": torch.zeros(2), "extra": RunsCode(marker)}, root / "crafted_weights.pt")
    (root / "cut.ckpt").write_bytes(own_run.ckpt.read_bytes()[:4000])
    torch.save({"state_dict": {"encoder.weight": torch.zeros(3)}}, root / "other.ckpt")
    shutil.copytree(pickle_root, root / "evil")
    (root / "evil" / "cifar-10-batches-py" / "data_batch_2").write_bytes(pickle.dumps(RunsCode(marker), protocol=2))
    shutil.copytree(folder_root, root / "damaged", ignore=shutil.ignore_patterns(".cifarlit-cache*"))
    for f in sorted((root / "damaged" / "train" / "cat").glob("*.png"))[:3]:
        f.write_bytes(b"not an image")
    (root / "one" / "train" / "cat").mkdir(parents=True)
    shutil.copy(next((folder_root / "train" / "cat").glob("*.png")), root / "one" / "train" / "cat" / "a.png")
    return {"root": root, "marker": marker, "pickle": pickle_root, "good": own_run.ckpt}


CASES = {
    "crafted checkpoint": (["test", "--ckpt_path", "{root}/crafted.ckpt"], "holds Python objects that reading it"),
    "crafted init_from": (["fit", "--model.init_from", "{root}/crafted_weights.pt"], "model.init_from="),
    "crafted batch file": (["fit", "--data.data_dir", "{root}/evil"], "data_batch_2 holds Python objects"),
    "truncated checkpoint": (["test", "--ckpt_path", "{root}/cut.ckpt"], "cut.ckpt cannot be read"),
    "foreign checkpoint": (["test", "--ckpt_path", "{root}/other.ckpt"], "is not a cifarlit checkpoint"),
    "missing checkpoint": (["test", "--ckpt_path", "{root}/missing.ckpt"], "missing.ckpt does not exist"),
    "weights_only false": (["test", "--ckpt_path", "{good}", "--weights_only", "false"], "--weights_only false"),
    "unreadable images": (["fit", "--data.data_dir", "{root}/damaged"], "cannot read 3 image files"),
    "one class": (["fit", "--data.data_dir", "{root}/one"], "has one class folder ('cat')"),
    "NaN loss": (
        [
            "fit",
            "--model.optimizer",
            "torch.optim.SGD",
            "--model.optimizer.init_args.lr",
            "1e9",
            "--trainer.max_epochs",
            "2",
        ],
        "the training loss became nan",
    ),  # fmt: skip
    "albumentations on the device": (
        [
            "fit",
            "--data.on_device",
            "true",
            "--data.augment.preset",
            "flip",
            "--data.augment.backend",
            "albumentations",
        ],
        "data.on_device=true cannot",
    ),  # fmt: skip
    "split that does not fit": (["fit", "--data.val_size", "500"], "data.val_size=500 does not fit"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_refusal_is_one_sentence_and_runs_nothing(case, inputs, tmp_path, monkeypatch, capsys):
    args, expected = CASES[case]
    args = [a.format(root=inputs["root"], good=inputs["good"]) for a in args]
    if "--data.data_dir" not in args:
        args += ["--data.data_dir", str(inputs["pickle"])]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli_main([args[0], "-c", DEFAULT, *args[1:]])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ") and expected in err.strip().splitlines()[-1]
    assert not inputs["marker"].exists()
