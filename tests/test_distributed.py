"""accelerate scale-out: 2 CPU processes give the same images as one, image for image."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdlab.distributed import batches, main, make_jobs
from sdlab.metadata import read_params


def _run(tmp_path: Path, processes: int) -> list[Path]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square on a white background\na small green cross\n")
    out = tmp_path / f"out{processes}"
    module = ["-m", "sdlab.distributed", str(prompts), "--model", "tiny-random", "-n", "3", "--steps", "3",
              "--batch-size", "2", "--seed", "10", "--out", str(out)]
    if processes == 1:
        cmd = [sys.executable, *module]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *module]
    env = os.environ | {"OMP_NUM_THREADS": "1", "SDLAB_PROGRESS": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sorted(out.glob("*.png"))


def test_jobs_and_batches_are_fixed():
    jobs = make_jobs(["a", "b"], seed=5, images_per_prompt=2)
    assert [(j.prompt, j.seed) for j in jobs] == [("a", 5), ("a", 6), ("b", 7), ("b", 8)]
    assert [[j.index for j in b] for b in batches(jobs, 3)] == [[0, 1, 2], [3]]


@pytest.mark.parametrize("args, message", [
    (["missing.txt"], "no prompt file at missing.txt: give a text file with one prompt per line"),
    (["blank.txt"], "blank.txt holds no prompt: write one prompt per line"),
    (["prompts.txt", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["prompts.txt", "-n", "-1"], "--images-per-prompt must be at least 1, got -1"),
    # the rules generate() checks by, under the options' own names
    (["prompts.txt", "--steps", "0"], "--steps must be a whole number from 1 to 500, got 0; 20–50 is typical"),
    (["prompts.txt", "--guidance", "99"], "--guidance must be between 0 and 50, got 99.0; 7.5 is typical, 1 turns "
                                          "guidance off"),
    (["prompts.txt", "--seed", "-5"], "--seed must be in [0, 2**64), got -5; e.g. --seed=42"),
    (["latin1.txt"], "latin1.txt is not UTF-8 text (invalid continuation byte at byte 9): save it as UTF-8")])
def test_bad_input_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    Path("blank.txt").write_text("\n  \n")
    Path("prompts.txt").write_text("a red circle\n")
    Path("latin1.txt").write_bytes("a red caf\u00e9 sign\n".encode("latin-1"))
    with pytest.raises(SystemExit) as exit:
        main(args + ["--model", "tiny-random", "--out", "out"])
    assert exit.value.code == 2 and capsys.readouterr().err.strip().endswith(f"error: {message}")
    assert not Path("out").exists()


def test_two_processes_equal_one(tmp_path):
    single, double = _run(tmp_path, 1), _run(tmp_path, 2)
    assert [p.name for p in single] == [p.name for p in double] and len(single) == 9
    for a, b in zip(single, double, strict=True):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))), a.name
        assert read_params(a) == read_params(b)


def test_an_unknown_model_and_an_unwritable_out_are_usage_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("prompts.txt").write_text("a red circle\n")
    Path("afile").write_text("")
    for args, words in ((["--model", "tiny-random", "--out", "afile"], "--out afile is a file, not a folder"),
                        (["--model", "no-such-model"], "no-such-model")):
        with pytest.raises(SystemExit) as exit:
            main(["prompts.txt", *args])
        assert exit.value.code == 2 and words in capsys.readouterr().err
