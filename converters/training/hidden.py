"""Layer-to-layer hidden-state loss for a shallower PyTorch student, as DistilBERT and MiniLM train theirs.

Student block i is matched to teacher block ``(i + 1) * T // S - 1`` of the teacher's deepest stack (6 -> 3:
teacher blocks 1, 3, 5, the "2i+1" of DistilBERT), by 1 - cosine per position: per token along the last
axis for (N, S, D) sequences (padding tokens left out when an input is named ``attention_mask``), per sample
otherwise. The output loss only says how the pooled result differs; these terms say so at every layer and
token, which is much more signal per sentence.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from ..errors import UserInputError
from .torch import first_output

MASK_INPUT = "attention_mask"  # the Hugging Face name of a (N, S) 1/0 padding mask


class HiddenStateError(UserInputError):
    """The hidden-state loss cannot pair the student's blocks with the teacher's."""


def layer_map(student_depth: int, teacher_depth: int) -> list[int]:
    """The teacher block each student block learns from: spread evenly, the last onto the last."""
    return [(i + 1) * teacher_depth // student_depth - 1 for i in range(student_depth)]


def deepest_blocks(module, what: str) -> tuple[str, list]:
    """(name, blocks) of ``module``'s deepest stack of like blocks, or one line saying there is none."""
    from .students import block_stacks

    stacks = block_stacks(module)
    if not stacks:
        raise HiddenStateError(f"distill.hidden_weight needs a stack of like blocks (an nn.ModuleList or "
                               f"nn.Sequential of layers) in the {what}; it has none. Set hidden_weight to 0")
    name, stack = max(stacks, key=lambda item: len(item[1]))
    return name, list(stack)


@contextmanager
def captured(blocks: Sequence[Any]) -> Iterator[list]:
    """Keep the first output of each of ``blocks`` while the body runs a forward, in call order."""
    outputs: list = []
    handles = [block.register_forward_hook(lambda _m, _i, out: outputs.append(first_output(out)))
               for block in blocks]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


class HiddenLoss:
    """Pairs the student's blocks with the teacher's and scores a batch; checked on example inputs first."""

    def __init__(self, student, teacher, example_inputs: Sequence[Any], input_names: Sequence[str] = ()):
        import torch

        self.student_name, self.student_blocks = deepest_blocks(student, "student")
        self.teacher_name, teacher_blocks = deepest_blocks(teacher, "teacher")
        if len(self.student_blocks) > len(teacher_blocks):
            raise HiddenStateError(f"distill.hidden_weight: the student's stack {self.student_name} has "
                                   f"{len(self.student_blocks)} blocks, more than the teacher's {self.teacher_name} "
                                   f"({len(teacher_blocks)}); set hidden_weight to 0")
        self.pairs = layer_map(len(self.student_blocks), len(teacher_blocks))
        self.teacher_blocks = [teacher_blocks[i] for i in self.pairs]
        self.teacher = teacher
        self.mask_index = list(input_names).index(MASK_INPUT) if MASK_INPUT in input_names else None
        with torch.no_grad():
            got, want = self.student_states(student, example_inputs), self.teacher_states(example_inputs)
        for i, (s, t) in enumerate(zip(got, want)):
            if tuple(s.shape) != tuple(t.shape):
                raise HiddenStateError(
                    f"distill.hidden_weight: student block {i} gives {tuple(s.shape)} but teacher block "
                    f"{self.pairs[i]} gives {tuple(t.shape)}; hidden states must have the teacher's width "
                    "(a --keep-layers student, not --width-ratio). Set hidden_weight to 0")

    def describe(self) -> str:
        return f"{self.student_name} blocks -> {self.teacher_name} blocks {self.pairs}"

    def student_states(self, student, inputs: Sequence[Any]) -> list:
        with captured(self.student_blocks) as outputs:
            student(*inputs)
        return outputs

    def teacher_states(self, inputs: Sequence[Any]) -> list:
        import torch

        with torch.no_grad(), captured(self.teacher_blocks) as outputs:
            self.teacher(*inputs)
        return outputs

    def __call__(self, student_states: Sequence[Any], inputs: Sequence[Any]):
        """Mean over the paired blocks of 1 - cosine (per token, padding left out; or per sample)."""
        import torch.nn.functional as F

        teacher_states = self.teacher_states(inputs)
        total = 0.0
        for s, t in zip(student_states, teacher_states):
            if s.ndim == 3:
                distance = 1.0 - F.cosine_similarity(s, t, dim=-1)  # (N, S)
                mask = inputs[self.mask_index] if self.mask_index is not None else None
                if mask is not None and tuple(mask.shape) == tuple(distance.shape):
                    weights = mask.to(distance.dtype)
                    total = total + (distance * weights).sum() / weights.sum().clamp_min(1.0)
                else:
                    total = total + distance.mean()
            else:
                total = total + (1.0 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean()
        return total / len(self.pairs)
