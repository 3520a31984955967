"""`python tests/nan_on_one_rank.py RANK STEP ARGS...`: `python -m train.vlm ARGS...` whose
loss turns NaN on rank RANK from its STEP-th forward pass on. Run under torchrun by a test of
how every rank stops on a NaN."""
import os
import sys

from dermvlm.vlm import model


def main():
    bad_rank, bad_step = int(sys.argv[1]), int(sys.argv[2])
    forward, calls = model.DermVLM.forward, [0]

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls[0] += 1
        if int(os.environ.get("RANK", "0")) == bad_rank and calls[0] >= bad_step:
            out = model.LossOutput(loss=out.loss * float("nan"))
        return out
    model.DermVLM.forward = poisoned
    from train.vlm import main as train_vlm
    return train_vlm(sys.argv[3:])


if __name__ == "__main__":
    sys.exit(main())
