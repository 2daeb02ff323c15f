"""Load a trained model from its checkpoint directory alone (no corpus needed)."""

import dataclasses
import logging
import pathlib

import jax

from model import checkpoint
from model.config import ModelConfig, TrainConfig, from_dict
from model.data import Vocab
from model.rnn import init_params, zero_carry
from model.train_lib import create_state, make_optimizer
from model.trainer import state_tree

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A restored model: its parameters plus everything needed to use them."""

    directory: pathlib.Path
    step: int
    model_config: ModelConfig
    train_config: TrainConfig
    vocab: Vocab
    params: dict
    meta: dict

    @property
    def preprocess(self) -> str:
        return self.train_config.preprocess

    @property
    def name(self) -> str:
        return self.directory.name

    def untrained_params(self) -> dict:
        """Re-initialize the same network from the run's seed: the model at step 0.

        The arrays are committed to the device of `params`, as restored
        arrays are, so that jitted functions compile once for both sets.
        """
        device = next(iter(jax.tree_util.tree_leaves(self.params)[0].devices()))
        return jax.device_put(init_params(self.model_config, self.train_config.seed), device)


def restore_target(model_config: ModelConfig, train_config: TrainConfig) -> dict:
    """Return the shapes, dtypes and CPU placement of a saved train state, computing no array.

    `jax.eval_shape` traces the initialization without running it, which saves
    compiling every initializer of a model that is about to be overwritten.
    """
    tx = make_optimizer(train_config, steps_per_epoch=1)
    shapes = jax.eval_shape(lambda: state_tree(
        create_state(model_config, train_config, tx),
        zero_carry(model_config, train_config.batch_size), 0, 0))
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=cpu), shapes)


def load(directory, which: str = "best") -> Pretrained:
    """Restore the "best" (default) or "latest" checkpoint of `directory` onto the CPU.

    Only complete steps are candidates: a save that did not finish is never loaded.
    The latest step is used for "best" when no step has a metric. Raises
    CheckpointError naming the directory and the fix when nothing can be loaded.
    """
    directory = pathlib.Path(directory).expanduser().resolve()
    manager = checkpoint.open_manager(directory, read_only=True)
    try:
        step = checkpoint.choose_step(manager, which)
        meta = checkpoint.restore_meta(manager, step)
        try:
            model_config = from_dict(ModelConfig, meta["model_config"])
            train_config = from_dict(TrainConfig, meta["train_config"])
            vocab = Vocab(tuple(meta["vocab"]))
        except (KeyError, TypeError, ValueError) as error:
            raise checkpoint.CheckpointError(
                f"the metadata of step {step} in {directory} is incomplete or invalid: "
                f"{type(error).__name__}: {error}; {checkpoint.DAMAGED_FIX}") from None
        state = checkpoint.restore_state(manager, step, restore_target(model_config,
                                                                       train_config))
    finally:
        manager.close()
    log.info("loaded step %d of %s", step, directory)
    return Pretrained(directory=directory, step=step, model_config=model_config,
                      train_config=train_config, vocab=vocab, params=state["params"], meta=meta)
