"""Lets PyPI's CUDA torchvision import next to CPU torch on CPU-only test machines.

PyPI ships torchvision only as a CUDA build. Its compiled ops library cannot load without the
CUDA runtime, and torchvision's meta registrations then fail on the missing ``torchvision::nms``
operator at import. This hook waits for the first ``import torchvision`` and, only when the
compiled library does not load, defines ``nms`` (and its quantized twin ``qnms``) with a pure-PyTorch CPU kernel first. On machines
where the library loads (any CUDA install), it does nothing. It makes ``import torchvision``
(transforms, models) work; ops that need the compiled library still report it missing. It is installed by
``tools/setup_host.sh`` on CPU test hosts only; users never need it.
"""
import importlib.abc
import importlib.machinery
import sys


def _nms_cpu(dets, scores, iou_threshold):
    import torch

    order = scores.argsort(descending=True)
    keep = []
    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    for pos in range(len(order)):
        if suppressed[pos]:
            continue
        i = order[pos]
        keep.append(int(i))
        rest = order[pos + 1:]
        xx1 = torch.maximum(x1[i], x1[rest])
        yy1 = torch.maximum(y1[i], y1[rest])
        xx2 = torch.minimum(x2[i], x2[rest])
        yy2 = torch.minimum(y2[i], y2[rest])
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[pos + 1:] |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def _register_if_missing():
    import torch

    spec = importlib.machinery.PathFinder.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import glob
    import os

    libs = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so"))
    try:
        if libs:
            torch.ops.load_library(libs[0])
            return
    except OSError:
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms_cpu, "CPU")
    # quantized variant: torchvision registers a fake kernel for it too, so it must exist
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("qnms", _nms_cpu, "CPU")
    # keep the library object alive for the life of the process
    sys.modules[__name__].__dict__["_library"] = lib


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            _register_if_missing()
        return None


sys.meta_path.insert(0, _Finder())
