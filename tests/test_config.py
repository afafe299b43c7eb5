"""Training configs: recipe + method files compose to exactly the configs they replaced, and the schema
turns every user mistake into one line."""

import hashlib
import json
import subprocess
import sys

import pytest
import torch
import yaml
from helpers import REPO
from ppfr.train.cli import main as train_cli
from ppfr.train.config import ConfigError, full_config, load_config

CONFIGS = REPO / "configs"

# sha256[:16] of json.dumps(config, sort_keys=True): (the file as loaded, its full config), computed from
# the 15 self-contained files these recipe + method files replaced (commit 878e7bb).
FROZEN = {
    "dlib_bdct": ("2fa5595cf47f8dfb", "1846e1cacb614f43"),
    "dlib_dctdp": ("cf78321dbe8363de", "23dcee03f54ab425"),
    "dlib_partialface": ("838f42434144f10f", "e65fe90b96d2a645"),
    "dlib_ppfr_fd": ("3edc9cb6bfb04b19", "0ebba3cdf766c2e7"),
    "dlib_rgb": ("69413bd3edda5d69", "6d025778f404f978"),
    "paper_bdct": ("39b018ebbbe0700c", "edfe64815e406528"),
    "paper_dctdp": ("8d5397bb8b0f696e", "67fe295e1a836266"),
    "paper_partialface": ("cf433d0a8ccd9957", "abe832deadb7b5ea"),
    "paper_ppfr_fd": ("346855657ce2d65b", "b59c7e445e27f289"),
    "paper_rgb": ("a418d6b880c265af", "f401842c50adffa7"),
    "small_bdct": ("87bd0b6a06b20336", "f4dda18d3b1f1914"),
    "small_dctdp": ("76fd1bf9f3279947", "b2a5feb40164a24e"),
    "small_partialface": ("1659f8289f9682e3", "a71908dd7af91a2c"),
    "small_ppfr_fd": ("fff57111b870532c", "5f0b5c31ded4f169"),
    "small_rgb": ("1f736254b2cf8edd", "4f6d963103988b21"),
}


DROP = object()  # a key left out


def digest(cfg: dict) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_every_shipped_config_composes_to_the_frozen_dict(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert (digest(cfg), digest(full_config(cfg))) == FROZEN[name]


def test_the_composed_values_a_reader_can_check():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(FROZEN)
    default = load_config(CONFIGS / "dlib_ppfr_fd.yaml")
    assert default["name"] == "dlib_ppfr_fd" and default["method"]["route"] is True
    assert default["model"] == {
        "backbone": "dlib",
        "embedding_size": 128,
        "entry": "conv64_1",
        "width": 96,
        "depth": 3,
        "pixel_stem": True,
    }
    assert default["train"]["stages"] == [1000] and default["train"]["lr"] == 2.0e-3
    rgb = load_config(CONFIGS / "dlib_rgb.yaml")
    assert rgb["model"]["entry"] == "chip" and "pixel_stem" not in rgb["model"]
    assert "stages" not in rgb["train"] and rgb["train"]["max_steps"] == 0
    dctdp = load_config(CONFIGS / "paper_dctdp.yaml")
    assert dctdp["head"] == {"type": "arcface", "s": 64.0, "m": 0.4, "weight": 1.0}
    assert dctdp["train"]["milestones"] == [10, 18, 22] and dctdp["train"]["amp"] is True


def test_the_shipped_checkpoint_config_passes_the_schema_unchanged():
    ck = torch.load(REPO / "pretrained" / "dlib_ppfr_fd" / "checkpoint.pt", weights_only=False)
    stored = ck["config"]
    assert full_config(stored) == stored
    composed = full_config(load_config(CONFIGS / "dlib_ppfr_fd.yaml"))
    # trained with threads 2, then slimmed (make slim: pixel stem width 96 depth 3 -> 48, 1; a leaner router)
    assert stored["model"]["width"] == 48 and stored["model"]["depth"] == 1
    lean = {"router_reader": 16, "router_sinkhorn": 3}
    assert {k: stored["method"][k] for k in lean} == lean
    method = {k: v for k, v in stored["method"].items() if k not in lean}
    slimmed = dict(stored, model=dict(stored["model"], width=96, depth=3), method=method)
    assert composed == dict(slimmed, train=dict(stored["train"], threads=None))


def test_a_users_config_on_a_recipe(tmp_path):
    mine = tmp_path / "mine.yaml"
    recipe = CONFIGS / "recipes" / "small.yaml"
    mine.write_text(
        yaml.safe_dump(
            {"recipe": str(recipe), "method": {"name": "bdct"}, "train": {"lr": 0.05, "milestones": [3]}}
        )
    )
    cfg = load_config(mine)
    base = yaml.safe_load(recipe.read_text())
    assert cfg["name"] == "mine" and "recipe" not in cfg
    assert cfg["train"] == {**base["train"], "lr": 0.05, "milestones": [3]}  # mappings merge key by key
    assert cfg["model"] == base["model"]
    mine.write_text("recipe: nowhere.yaml\nmethod: {name: rgb}\n")
    with pytest.raises(ConfigError, match="nowhere.yaml does not exist"):
        load_config(mine)
    (tmp_path / "chained.yaml").write_text(f"recipe: {recipe}\n")
    mine.write_text("recipe: chained.yaml\nmethod: {name: rgb}\n")
    with pytest.raises(ConfigError, match="cannot name another recipe"):
        load_config(mine)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"max_stepz": 3}}, "unknown config key 'train.max_stepz'; known: ["),
        ({"recipes": 1}, "unknown config key 'recipes'"),
        ({"train": {"lr": "fast"}}, "config key 'train.lr' must be a number, got 'fast'"),
        ({"train": {"lr": "1e-3"}}, "got '1e-3'; write numbers like 1.0e-3"),
        ({"train": {"max_steps": True}}, "'train.max_steps' must be an integer, got True"),
        ({"train": {"stages": [1.5]}}, "'train.stages' must be a list of integers"),
        ({"train": {"epochs": "x"}}, "'train.epochs' must be a number or null"),
        ({"train": {"optimizer": "adam"}}, "'train.optimizer' must be one of 'sgd', 'adamw', got 'adam'"),
        ({"data": {"eval": "lfw"}}, "'data.eval' must be a list of mappings"),
        ({"head": None}, "config key 'head' must be a mapping, got None"),
        ({"method": DROP}, "config needs method: {name: rgb|bdct"),
        ({"method": {"key": "k"}}, "config needs method.name"),
        ({"head": {"weight": 0}, "distill": {"weight": 0}}, "nothing to train"),
    ],
)
def test_schema_errors_are_one_clear_line(change, message):
    cfg = {"method": {"name": "rgb"}, "distill": {"weight": 1.0}} | change
    cfg = {k: v for k, v in cfg.items() if v is not DROP}
    with pytest.raises(ConfigError) as err:
        full_config(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_ppfr_train_exits_2_with_one_line(tmp_path, capsys):
    args = ["--config", str(CONFIGS / "small_ppfr_fd.yaml"), "--set", "train.lr=fast"]
    assert train_cli(args) == 2
    assert (
        capsys.readouterr().err == "ppfr-train: error: config key 'train.lr' must be a number, got 'fast'\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: ../nope.yaml\n")
    proc = subprocess.run(
        [sys.executable, "-m", "ppfr.train.cli", "--config", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "nope.yaml does not exist" in proc.stderr
    bad.write_text("method: {name: rgb\n")
    assert train_cli(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML" in err and err.count("\n") == 1
