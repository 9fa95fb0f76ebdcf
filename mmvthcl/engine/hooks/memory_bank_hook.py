"""Runner-side duties of the VTHCL memory banks."""
from mmengine.dist import all_reduce_params
from mmengine.hooks import SyncBuffersHook
from mmengine.model import is_model_wrapper
from mmengine.runner import BaseLoop

from mmaction.registry import HOOKS


def find_memory(model):
    """The head and :class:`HierarchicalMemoryBank` of a (wrapped) VTHCL."""
    model = model.module if is_model_wrapper(model) else model
    head = getattr(model, 'head', None)
    memory = getattr(head, 'memory', None)
    if memory is None:
        raise TypeError(f'{type(model).__name__} has no head.memory: '
                        'MemoryBankHook works with VTHCL models')
    return head, memory


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
    """

    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        if self.distributed:
            for hook in runner.hooks:
                if isinstance(hook, SyncBuffersHook) and hook is not self:
                    raise ValueError(
                        'a stock SyncBuffersHook would average the memory '
                        "banks across ranks: set default_hooks.sync_buffers="
                        "dict(type='MemoryBankHook') instead of adding "
                        'MemoryBankHook to custom_hooks')
        loop = getattr(runner, '_train_loop', None)
        if not isinstance(loop, BaseLoop):
            return  # not a training run
        dataset = loop.dataloader.dataset
        n = len(dataset)
        head, memory = find_memory(runner.model)
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

    def before_val_epoch(self, runner) -> None:
        if self.distributed:
            if not self.called_in_train:
                self._sync_buffers(runner)
            self.called_in_train = False

    def after_train_epoch(self, runner) -> None:
        if self.distributed:
            self._sync_buffers(runner)
            self.called_in_train = True

