"""Classify the lesions of one subject with an exported model, without mslesion: onnxruntime, nibabel, numpy, scipy.

    python run_onnx.py model.onnx lesion_mask.nii.gz flair=FLAIR.nii.gz qsm=QSM_ppm.nii.gz > lesions.csv

Cuts the patches as `mslesion extract` does with its defaults (binary mask, 6-connected lesions of at least 10 mm³,
RAS orientation, FLAIR over the median of normal-appearing tissue, QSM in ppm) and prints one row per lesion:
its centre voxel (RAS array indices) and the class probabilities.
"""

import sys

import nibabel as nib
import numpy as np
import onnxruntime as ort
from scipy import ndimage

model, mask_path, *images = sys.argv[1:]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map  # channels, class_names, patch_size, temperature, ...
channels, classes, p = meta["channels"].split(","), meta["class_names"].split(","), int(meta["patch_size"])


def load(path):  # the closest RAS orientation, as extract reorients every input
    image = nib.as_closest_canonical(nib.load(path))
    return np.nan_to_num(np.asarray(image.dataobj, dtype=np.float32)), image


mask, mask_image = load(mask_path)
lesion_voxels = np.abs(mask - 1) <= 1e-3
volume = {name: load(path)[0] for name, path in (arg.split("=", 1) for arg in images)}
if "flair" in volume:  # normal-appearing tissue = 1: outside lesions, above 10% of the 99th percentile
    flair = volume["flair"]
    positive = flair[flair > 0]
    threshold = 0.1 * np.percentile(positive[:: max(1, positive.size // 200_000)], 99)
    volume["flair"] = flair / np.float32(np.median(flair[(flair > threshold) & ~lesion_voxels]))

lesions, _ = ndimage.label(lesion_voxels)  # 6-connected components, numbered as mslesion numbers them
sizes = np.bincount(lesions.ravel())
sizes[0] = 0
kept = np.flatnonzero(sizes * np.prod(mask_image.header.get_zooms()[:3]) >= 10 * (1 - 1e-6))  # ≥ 10 mm³
boxes = ndimage.find_objects(lesions)
padded = {c: np.pad(lesions if c == "mask" else volume[c], p) for c in channels}  # zeros beyond the edge
patches, centres = [], []
for lesion in kept:
    box = boxes[lesion - 1]
    inside = np.argwhere(lesions[box] == lesion)
    centre = np.rint(inside.mean(0)).astype(int)
    if lesions[box][tuple(centre)] != lesion:  # outside a non-convex lesion: its voxel nearest to it, in mm
        spacing = np.asarray(mask_image.header.get_zooms()[:3])
        centre = inside[np.argmin((((inside - centre) * spacing) ** 2).sum(1))]
    centre = centre + [s.start for s in box]
    window = tuple(slice(c + p - p // 2, c + p - p // 2 + p) for c in centre)  # the p³ cube around the centre
    patch = [padded[c][window] == lesion if c == "mask" else padded[c][window] for c in channels]
    patches.append(np.stack(patch).astype(np.float32))  # the mask channel shows this lesion only
    centres.append(centre)

probabilities = session.run(None, {"patches": np.stack(patches)})[0] if patches else np.zeros((0, len(classes)))
print("lesion,i,j,k," + ",".join(f"p_{name}" for name in classes))
for lesion, centre, row in zip(kept, centres, probabilities, strict=True):
    print(f"{lesion}," + ",".join(map(str, centre)) + "," + ",".join(f"{v:.6f}" for v in row))
