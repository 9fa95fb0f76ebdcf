"""Runner-side duties of the VTHCL memory banks."""
import math
from typing import List

from mmengine.dist import all_reduce_params, get_world_size
from mmengine.hooks import CheckpointHook, SyncBuffersHook
from mmengine.runner import BaseLoop

from mmaction.registry import HOOKS
from ...utils import inner_dataset, unwrap_model


def find_memory(model):
    """The head and :class:`HierarchicalMemoryBank` of a (wrapped) VTHCL."""
    model = unwrap_model(model)
    head = getattr(model, 'head', None)
    memory = getattr(head, 'memory', None)
    if memory is None:
        raise TypeError(f'{type(model).__name__} has no head.memory: '
                        'MemoryBankHook works with VTHCL models')
    return head, memory


def instance_dataset(dataset):
    """The dataset whose indices key the memory banks.

    Samples carry the ``sample_idx`` of the dataset that loads them, so
    through a wrapper that repeats one dataset (``RepeatDataset``,
    ``ClassBalancedDataset``) the banks need a row per *inner* sample; rows
    beyond would never be written and would still be drawn as negatives. A
    ``ConcatDataset`` numbers each part from 0, so two videos would share a
    row: it is refused.
    """
    from mmengine.dataset import ConcatDataset
    dataset = inner_dataset(dataset)
    if isinstance(dataset, ConcatDataset):
        raise ValueError(
            'train_dataloader.dataset is a ConcatDataset: its parts number '
            'their samples from 0 each, so two videos would share a memory '
            'bank row; list all videos in one annotation file instead')
    return dataset


def batches_per_rank(num_samples: int, world: int, batch_size: int,
                     drop_last: bool, round_up: bool) -> List[int]:
    """Training batches of each rank in an epoch of ``DefaultSampler``."""
    if round_up:
        shares = [math.ceil(num_samples / world)] * world
    else:
        shares = [len(range(r, num_samples, world)) for r in range(world)]
    return [s // batch_size if drop_last else math.ceil(s / batch_size)
            for s in shares]


def _state_dict_prefix(model, module) -> str:
    model = unwrap_model(model)
    for name, m in model.named_modules():
        if m is module:
            return name + '.'
    raise KeyError('module not found in the model')


@HOOKS.register_module()
class MemoryBankHook(SyncBuffersHook):
    """Size the memory banks from the training set; sync the other buffers.

    It replaces MMEngine's ``SyncBuffersHook`` in VTHCL configs
    (``default_hooks.sync_buffers``):

    - Before the run (hence before ``--resume`` or ``load_from`` restores a
      checkpoint), banks without a configured size get one row per training
      sample. A configured ``model.head.memory.num_samples`` that disagrees
      with the training set, or a ``num_negatives`` larger than it, stops the
      run with a message naming the key.
    - After each training epoch it averages buffers across ranks like the
      stock hook (BN statistics), except the memory's: the banks are already
      identical on all ranks (or sharded, where averaging would mix slices),
      and all-reducing 6 × N × 128 floats would cost more than the epoch's
      last steps.
    - With a sharded memory, it saves the banks whole in checkpoints (the
      ranks' slices gathered; each rank takes its slice back on loading), so
      checkpoints do not depend on the world size or the mode. MMEngine
      saves on rank 0 only, so the slices are gathered, by every rank, just
      before a ``CheckpointHook`` saves (this hook runs first).
    """

    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        super().__init__()
        self._whole_banks = None  # rank 0: gathered for the next save

    def before_run(self, runner) -> None:
        if self.distributed:
            for hook in runner.hooks:
                if isinstance(hook, SyncBuffersHook) and hook is not self:
                    raise ValueError(
                        'a stock SyncBuffersHook would average the memory '
                        "banks across ranks: set default_hooks.sync_buffers="
                        "dict(type='MemoryBankHook') instead of adding "
                        'MemoryBankHook to custom_hooks')
        head, memory = find_memory(runner.model)
        memory.hook_attached = True
        best = [h for h in runner.hooks
                if isinstance(h, CheckpointHook) and h.save_best]
        if memory.sharded and self.distributed and best:
            # refused on every rank now: at the save itself only rank 0
            # would fail, and the others would wait for it forever
            raise ValueError(
                f'default_hooks.checkpoint.save_best={best[0].save_best} '
                'with a sharded memory: its banks are gathered only for the '
                'regular saves (interval / last); set save_best=None or '
                'model.head.memory.sharded=False')
        loop = getattr(runner, '_train_loop', None)
        if not isinstance(loop, BaseLoop):
            return  # not a training run
        loader = loop.dataloader
        if self.distributed and not getattr(loader.sampler, 'round_up',
                                            True):
            # every step gathers the batch of every rank: a rank with one
            # batch more than the others would wait in that gather forever
            counts = batches_per_rank(
                len(loader.dataset), get_world_size(), loader.batch_size,
                loader.drop_last, round_up=False)
            if len(set(counts)) > 1:
                raise ValueError(
                    'train_dataloader.sampler.round_up=False gives the ranks '
                    f'{min(counts)} or {max(counts)} batches an epoch '
                    f'({len(loader.dataset)} samples over {len(counts)} '
                    'processes); each step gathers every rank\'s batch, so '
                    'set round_up=True')
        dataset = instance_dataset(loader.dataset)
        n = len(dataset)
        if memory.size_fixed and memory.num_samples != n:
            raise ValueError(
                f'model.head.memory.num_samples={memory.num_samples} does '
                f'not match the training set ({n} samples in '
                f"{getattr(dataset, 'ann_file', type(dataset).__name__)}); "
                'leave it None to follow the dataset')
        if memory.num_samples != n:
            memory.resize(n)
            runner.logger.info(f'memory banks sized to {n} samples '
                               f'({len(memory.keys)} banks × '
                               f'{memory.feat_dim} floats)')
        head.check_bank_size()

    def _sync_buffers(self, runner) -> None:
        _, memory = find_memory(runner.model)
        skip = {id(b) for b in memory.buffers()}
        model = runner.model
        all_reduce_params([b for b in model.buffers() if id(b) not in skip],
                          op='mean')

    def _gather_if_saving(self, runner, by_epoch: bool) -> None:
        _, memory = find_memory(runner.model)
        if not (memory.sharded and self.distributed):
            return
        for hook in runner.hooks:
            if not isinstance(hook, CheckpointHook) or \
                    hook.by_epoch != by_epoch:
                continue
            # the conditions under which CheckpointHook saves next
            if by_epoch:
                saving = hook.every_n_epochs(
                    runner, hook.interval, hook.save_begin) or (
                        hook.save_last and hook.is_last_train_epoch(runner))
            else:
                saving = hook.every_n_train_iters(
                    runner, hook.interval, hook.save_begin) or (
                        hook.save_last and hook.is_last_train_iter(runner))
            if saving:
                self._whole_banks = memory.full_banks()
                return

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        self._gather_if_saving(runner, by_epoch=False)

    def before_val_epoch(self, runner) -> None:
        if self.distributed:
            if not self.called_in_train:
                self._sync_buffers(runner)
            self.called_in_train = False

    def after_train_epoch(self, runner) -> None:
        if self.distributed:
            self._sync_buffers(runner)
            self.called_in_train = True
        self._gather_if_saving(runner, by_epoch=True)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        _, memory = find_memory(runner.model)
        if not memory.sharded:
            return  # replicated banks are ordinary buffers of the model
        banks = memory.full_banks() if not self.distributed else \
            self._whole_banks
        if banks is None:
            raise RuntimeError(
                'sharded memory banks are gathered only for the regular '
                'saves of CheckpointHook (interval / last); this checkpoint '
                '(e.g. save_best) would lack them')
        prefix = _state_dict_prefix(runner.model, memory)
        for name, bank in banks.items():
            checkpoint['state_dict'][prefix + name] = bank
        self._whole_banks = None
