"""Config composition, command-line overrides and the errors bad input gets."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from genlab.config import choices_of, compose, config_dir, load_group_file, parse_argv, parse_value
from genlab.errors import ConfigError
from genlab.instantiate import instantiate


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("None", None),
        ("null", None),
        ("True", True),
        ("false", False),
        ("5", 5),
        ("0.5", 0.5),
        ("1e-3", 1e-3),
        ("[32, 64]", [32, 64]),
        ("bf16-mixed", "bf16-mixed"),
        ("logs/my run", "logs/my run"),
    ],
)
def test_values_parse_as_yaml_and_python_spellings(text: str, value: object) -> None:
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_both_argument_forms_and_separate_values() -> None:
    assert parse_argv(["--a.b=1", "c=x", "--d", "None"]) == [("a.b", 1), ("c", "x"), ("d", None)]


def test_wandb_agent_form_equals_make_form() -> None:
    make_form = compose(["model=vae", "trainer.max_epochs=5", "model.latent_dim=8"])
    agent_form = compose(["--model=vae", "--trainer.max_epochs=5", "--model.latent_dim=8"])
    assert make_form == agent_form
    assert make_form.trainer.max_epochs == 5
    assert make_form.model.decoder.in_features == 8  # interpolation follows the override
    assert make_form.model.encoder.out_features == 16


def test_model_names_its_default_data_and_family_trainer_length() -> None:
    cfg = compose(["model=vae"])
    assert cfg.groups.data == "digits"
    assert cfg.data._target_.endswith("DigitsDataModule")
    assert cfg.trainer.max_epochs == 200


def test_group_selection() -> None:
    cfg = compose(["model=vae", "data=mnist", "trainer=ddp", "logger=csv,wandb"])
    assert cfg.data._target_.endswith("MNISTDataModule")
    assert cfg.model.encoder.image_size == 28  # sizes follow the data
    assert cfg.trainer.strategy == "ddp"
    assert set(cfg.logger) == {"csv", "wandb"}


def test_presets_beat_family_defaults_and_the_command_line_beats_all() -> None:
    assert compose(["trainer=debug"]).trainer.max_epochs == 2
    assert compose(["trainer=debug", "trainer.max_epochs=7"]).trainer.max_epochs == 7


def test_family_defaults_beat_the_default_files_but_not_chosen_ones() -> None:
    feedback = ["model=gpt_feedback", "model.init_from=runs/base"]
    assert compose(feedback).callbacks.checkpoint.monitor == "val/reward"  # over callbacks/default.yaml
    assert compose(["model=gpt"]).callbacks.checkpoint.monitor == "val/loss"
    chosen = compose([*feedback, "callbacks=default"]).callbacks.checkpoint.monitor
    assert chosen == "val/loss"  # a file named on purpose beats the family
    assert compose([*feedback, "trainer=debug"]).trainer.limit_train_batches == 5  # the family says 25


def test_experiment_selects_groups_and_overrides_values() -> None:
    cfg = compose(["experiment=vae_mnist"])
    assert cfg.groups.data == "mnist"
    assert cfg.model.latent_dim == 32


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["trainer.max_epoch=5"], "max_epochs"),
        (["model.latent_dims=8"], "latent_dim"),
        (["sed=1"], "seed"),
        (["model.encoder.hiden_features=[8]"], "hidden_features"),
        (["data.batch_sise=3"], "batch_size"),  # forwarded through **kwargs to the base class
    ],
)
def test_unknown_key_names_the_key_and_the_nearest_choice(argv: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match="unknown key") as err:
        compose(argv)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["model.latent_dim=abc"], "model.latent_dim"),
        (["trainer.precision=bf17"], "trainer.precision"),
        (["compile=maybe"], "compile"),
        (["seed=abc"], "seed"),
        (["model.likelihood=poisson"], "bernoulli"),
    ],
)
def test_wrong_type_names_the_key(argv: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match="wrong type|must be") as err:
        compose(argv)
    assert expected in str(err.value)


def test_missing_group_file_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="no config 'nope' for model") as err:
        compose(["model=nope"])
    assert "vae" in str(err.value)
    with pytest.raises(ConfigError, match="Did you mean: mnist"):
        compose(["data=mnsit"])


def test_required_value_is_named() -> None:
    with pytest.raises(ConfigError, match="data.path' is required"):
        compose(["data=image_folder"])


def test_model_data_mismatch(tmp_path: Path) -> None:
    """Data without image sizes (as text data has) given to an image model."""
    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    (root / "data" / "no_images.yaml").write_text("_target_: genlab.data.DigitsDataModule\nseed: 0\n")
    with pytest.raises(ConfigError, match="model 'vae' does not fit data 'no_images'") as err:
        compose(["data=no_images"], root=root)
    assert "data.channels" in str(err.value)


def _family_of_data() -> dict[str, str]:
    """Each data config's family: the model whose default it is (text data needs a text model)."""
    families = {}
    for model in choices_of("model"):
        for entry in load_group_file("model", model, config_dir())[1]:
            families.setdefault(entry.get("data"), model)
    for experiment in choices_of("experiment"):  # data no model names as default (code): its experiment's model
        entries = load_group_file("experiment", experiment, config_dir())[1]
        chosen = {key: value for entry in entries if isinstance(entry, dict) for key, value in entry.items()}
        if "data" in chosen and "model" in chosen:
            families.setdefault(chosen["data"], chosen["model"])
    return families


def _argv_for(group: str, choice: str, tmp_path: Path) -> list[str]:
    argv = [f"{group}={choice}"]
    if group == "data":
        argv.insert(0, f"model={_family_of_data().get(choice, 'vae')}")
    if group == "data" and choice in ("image_folder", "streaming"):  # a path is required; read at set-up
        argv.append(f"data.path={tmp_path}")
    if group == "data" and choice == "streaming":  # its family is a conditional one (experiment=dit_s2_...), whose
        argv.append("data.num_classes=10")  # net is built before set-up reads the prepared number of classes
    if group == "experiment" and choice == "dit_s2_imagenet256_latent":  # data=streaming, as above
        argv.append(f"data.path={tmp_path}")
    if group == "model" and choice == "gpt_feedback":  # read when training starts, not when built
        argv.append(f"model.init_from={tmp_path}/gpt_run")
    if group == "experiment" and choice.startswith(("latent_", "vq_")):  # read when built: an untrained one will do
        vq = ["model.regularizer=vq"] if choice.startswith("vq_") else []  # the VQ-GPT's first stage has codes
        config = OmegaConf.to_container(compose(["model=autoencoder", "data=mnist5k", *vq]), resolve=True)
        torch.save(
            {"genlab": {"config": config}, "state_dict": instantiate(config["model"]).state_dict()},
            tmp_path / "ae.ckpt",
        )
        argv.append(f"model.first_stage={tmp_path / 'ae.ckpt'}")
    return argv


ALL_CHOICES = [(g, c) for g in ("model", "data", "trainer", "logger", "callbacks", "experiment") for c in choices_of(g)]


@pytest.mark.parametrize(("group", "choice"), ALL_CHOICES, ids=[f"{g}={c}" for g, c in ALL_CHOICES])
def test_every_shipped_config_composes_and_builds(group: str, choice: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose([f"log_dir={tmp_path}", "run_dir=" + str(tmp_path / "run"), *_argv_for(group, choice, tmp_path)])
    model = instantiate(cfg.model)
    assert isinstance(model, torch.nn.Module)
    instantiate(cfg.data)
    for node in (*cfg.callbacks.values(), *cfg.logger.values()):
        instantiate(node)
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        pytest.skip("preset needs a GPU; composed and validated, Trainer not built")
    instantiate(cfg.trainer)


@pytest.mark.parametrize("name", ["2024-01-05", "0123", "12:30", "yes", "1e3", "007"])
def test_string_and_null_keys_keep_the_text_as_typed(name: str) -> None:
    assert compose(["model=vae", f"run_name={name}"]).run_name == name  # YAML 1.1 would give a date, 83, 750, True
    assert compose(["model=gpt", f"model.sample_prompt={name}"]).model.sample_prompt == name
    assert compose(["model=vae", "run_name=null"]).run_name is None


def test_numbers_are_read_the_yaml_1_2_way() -> None:
    assert compose(["model=vae", "seed=0123"]).seed == 123  # decimal, not octal
    assert compose(["model=gpt", "model.top_k=5"]).model.top_k == 5  # a null whose type is a number
    with pytest.raises(ConfigError, match="'seed' must be a number, got '12:30'"):
        compose(["model=vae", "seed=12:30"])


def test_experiment_settings_for_a_callback_that_is_not_there_are_dropped(caplog) -> None:
    cfg = compose(["experiment=vae_mnist", "callbacks=none"])
    assert dict(cfg.callbacks) == {}
    assert "callbacks.samples: ignored (every_n_epochs=5), since callbacks=none" in caplog.text
    instantiate(cfg.callbacks)  # nothing left that cannot be built


def test_a_target_whose_dependency_is_missing_says_so(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "needs_dep"
    package.mkdir()
    (package / "__init__.py").write_text("import a_package_that_is_not_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ConfigError, match="needs the package 'a_package_that_is_not_installed', which is not installed"
    ):
        compose(["model=vae", "model.optimizer._target_=needs_dep.Optimizer"])
    with pytest.raises(ConfigError, match="cannot import 'genlab.nets.NoSuchNet'; check the spelling"):
        compose(["model=vae", "model.encoder._target_=genlab.nets.NoSuchNet"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trainer.accelerator=gpu"], "'trainer': Trainer could not be built: MisconfigurationException"),
        (
            ["model.encoder.hidden_features=[]"],
            "'model.encoder': MLPEncoder could not be built: ValueError: hidden_features needs",
        ),
        (["model.optimizer.lr=-1"], "'model.optimizer': Adam could not be built: ValueError: Invalid learning rate"),
    ],
)
def test_an_object_refusing_its_config_is_one_line_naming_its_key(argv, message, tmp_path, capsys) -> None:
    from genlab.train import main

    if "gpu" in argv[0] and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = ["model=vae", "trainer=debug", f"log_dir={tmp_path}", "callbacks.progress.refresh_rate=0", *argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"genlab: error: {message}") and not any("Traceback" in line for line in err)


def test_seed_null_chooses_a_seed_that_is_logged_and_kept(monkeypatch, caplog) -> None:
    monkeypatch.delenv("GENLAB_SEED", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = compose(["model=vae", "seed=null"])
    assert isinstance(cfg.seed, int) and cfg.data.seed == cfg.seed  # everything seeded follows it
    assert f"chose seed={cfg.seed}" in caplog.text
    monkeypatch.setenv("GENLAB_SEED", str(cfg.seed))  # what train() exports for the ranks it starts
    assert compose(["model=vae", "seed=null"]).seed == cfg.seed
    monkeypatch.delenv("GENLAB_SEED")
    monkeypatch.setenv("WORLD_SIZE", "2")  # started separately: no way to agree
    with pytest.raises(ConfigError, match="give every process the same seed"):
        compose(["model=vae", "seed=null"])


@pytest.mark.parametrize("size", [0, -4])
def test_a_batch_size_below_one_is_one_line(size: int, tmp_path, capsys) -> None:
    from genlab.train import main

    assert main(["model=vae", "trainer=debug", f"log_dir={tmp_path}", f"data.batch_size={size}"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"genlab: error: data.batch_size must be at least 1 (images per device and step), got {size}"
    )


def test_a_dict_on_the_command_line_merges_into_the_node() -> None:
    from genlab.tokenizers import ByteTokenizer

    cfg = compose(["model=gpt", "model.net={n_layer: 2, dropout: 0.1}"])
    assert cfg.model.net.n_layer == 2 and cfg.model.net.dropout == 0.1
    assert cfg.model.net._target_ == "genlab.nets.gpt.GPT" and cfg.model.net.n_head == 4  # the rest kept
    model = instantiate(cfg.model, "model")
    model.build(ByteTokenizer())
    assert len(model.net.blocks) == 2
    with pytest.raises(ConfigError, match="unknown key 'model.net.n_layers'.*Did you mean: n_layer"):
        compose(["model=gpt", "model.net={n_layers: 2}"])  # each key checked as if given alone
    with pytest.raises(ConfigError, match="'model.net.n_layer' = 'x' has the wrong type"):
        compose(["model=gpt", "model.net={n_layer: x}"])
    flow = "{_target_: genlab.models.diffusion_process.RectifiedFlow, time_scale: 500.0}"
    process = compose(["model=diffusion", f"model.process={flow}"]).model.process
    assert "schedule" not in process and process.time_scale == 500  # another class: the node replaced


@pytest.mark.parametrize("model", ["vae", "diffusion", "flow", "flow_matching", "gpt"])
def test_an_optimizer_built_inside_a_module_is_named_by_its_config_key(model: str, tmp_path, capsys) -> None:
    from genlab.train import main

    args = [f"model={model}", "trainer=debug", f"log_dir={tmp_path}", "callbacks.progress.refresh_rate=0"]
    if model == "gpt":
        (tmp_path / "book.txt").write_text("some words to read " * 200)
        args += [f"data.path={tmp_path / 'book.txt'}", f"data.data_dir={tmp_path}", "data.block_size=8"]
    assert main([*args, "model.optimizer.lr=-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "genlab: error: 'model.optimizer': " in err[-1] and "Invalid learning rate" in err[-1], err[-1]


def test_a_node_built_inside_a_module_keeps_its_key_whatever_its_depth() -> None:
    cfg = compose(["model=diffusion", "model.net.conditioning.drop_prob=-3"])
    with pytest.raises(ConfigError, match=r"^'model.net.conditioning': LabelEmbedding could not be built"):
        instantiate(cfg.model, "model")  # DiffusionModule builds its net itself, giving no key
    with pytest.raises(ConfigError, match=r"^'Adam' could not be built|^'Adam': Adam could not be built"):
        instantiate({"_target_": "torch.optim.Adam", "_partial_": True, "lr": -1})([torch.zeros(1)])  # no key known


@pytest.mark.parametrize("model", choices_of("model"))
def test_a_model_file_without_recursive_false_is_refused_at_composition(model: str, tmp_path: Path) -> None:
    """Without `_recursive_: false` the module gets built nets, which save_hyperparameters cannot keep:
    training works, Module.load_from_checkpoint does not. Every family's file is checked (a fork's too)."""
    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    path = root / "model" / f"{model}.yaml"
    text = path.read_text()
    assert "_recursive_: false" in text, f"configs/model/{model}.yaml must set _recursive_: false"
    path.write_text(text.replace("_recursive_: false", "_recursive_: true"))
    argv = [f"model={model}", f"model.init_from={tmp_path}"] if model == "gpt_feedback" else [f"model={model}"]
    with pytest.raises(ConfigError, match=rf"model/{model}\.yaml\): .* lacks `_recursive_: false`"):
        compose(argv, root=root)


def _training_steps(trainer) -> float:
    """The most optimizer steps (or batches) a composed trainer config can run."""
    max_steps = trainer.get("max_steps")
    by_steps = max_steps if max_steps is not None and max_steps >= 0 else math.inf
    per_epoch = trainer.get("limit_train_batches")
    max_epochs = trainer.get("max_epochs")
    epochs = max_epochs if max_epochs is not None and max_epochs >= 0 else math.inf
    by_epochs = epochs * per_epoch if isinstance(per_epoch, int) else math.inf
    return min(by_steps, by_epochs)


RUN_RECIPES = [f"model={m}" for m in choices_of("model")] + [f"experiment={e}" for e in choices_of("experiment")]


@pytest.mark.parametrize("recipe", RUN_RECIPES)
def test_trainer_debug_is_short_for_every_family_and_experiment(recipe: str, tmp_path: Path) -> None:
    argv = [recipe, "trainer=debug"] + ([f"model.init_from={tmp_path}"] if "gpt_feedback" in recipe else [])
    argv += [f"data.path={tmp_path}"] if recipe == "experiment=dit_s2_imagenet256_latent" else []  # data=streaming
    trainer = compose(argv).trainer
    assert _training_steps(trainer) <= 10, f"{recipe} trainer=debug runs up to {_training_steps(trainer)} batches"
    assert isinstance(trainer.limit_val_batches, int) and trainer.limit_val_batches <= 2
    assert trainer.accelerator == "cpu"
    assert compose([*argv, "trainer.limit_train_batches=3"]).trainer.limit_train_batches == 3  # the command line wins


def test_an_experiment_keeps_its_trainer_keys_a_preset_does_not_set(tmp_path: Path) -> None:
    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    recipe = "defaults:\n  - model: vae\ntrainer:\n  accumulate_grad_batches: 4\n  max_epochs: 50\n"
    (root / "experiment" / "accumulating.yaml").write_text(recipe)
    cfg = compose(["experiment=accumulating", "trainer=gpu"], root=root)
    assert cfg.trainer.accumulate_grad_batches == 4  # gpu.yaml's base (default.yaml) says 1: the experiment wins
    assert cfg.trainer.precision == "bf16-mixed"  # gpu.yaml's own key
    assert compose(["experiment=accumulating", "trainer=debug"], root=root).trainer.max_epochs == 2


def test_print_config_names_the_config_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    from genlab.train import main

    root = tmp_path / "configs"
    shutil.copytree(config_dir(), root)
    monkeypatch.setenv("GENLAB_CONFIG_DIR", str(root))
    assert config_dir() == root
    assert main(["--print-config", "model=vae"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith(f"# composed from {root}")
