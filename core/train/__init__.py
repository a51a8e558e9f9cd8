"""The training layer: the shared loop, device choice, the forward-pass output type and atomic
result writing. It sits between ``core.data`` and ``core.models`` and imports neither models
nor anything above them, so ``import core.train.loop`` works on its own."""
