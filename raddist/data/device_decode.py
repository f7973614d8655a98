"""JPEG decoding on the embedding GPU (nvjpeg, through torchvision.io.decode_jpeg on the device).

On a GPU node the CPUs' decoding is what limits embedding (benchmarks/RESULTS.md), and JPEG is
what CheXpert ships. When resources.gpu_jpeg_decode is on and the cluster has GPUs, the decode
tasks pass a JPEG row's bytes through undecoded (`defer_to_device`) and the actor decodes them in
one batched call on its GPU, then does what transforms.decode does for an 8-bit image with the
"auto" window: stretch min..max to 0..255 and resize to size x size, bilinear with antialiasing.

A file the device decoder refuses is decoded by Pillow in the actor instead (EmbedBatch), so a
gap in the device's codec support costs speed, never rows. The pixels differ from Pillow's by a
grey level or two (IDCT rounding, resampling kernel), so the embedding cache keys the decoder
(cache.key(..., decoder=DECODER)). The same code runs on a CPU device, which is how the tests
check it against transforms.decode.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

from raddist.data.contract import PreprocessContract
from raddist.data.readers import detect_format

DECODER = "torchvision-decode_jpeg-v1"


def defer_to_device(uri: str, data: bytes, contract: PreprocessContract) -> bool:
    """Whether this file can be left to the device: a JPEG under the "auto" window and no clip
    (other contracts need the general float path of transforms.decode)."""
    return detect_format(uri, data) == "jpeg" and contract.window == "auto" and contract.clip_percentiles is None


def decode_jpegs(blobs: Sequence[bytes], size: int, device) -> Tuple[object, List[str]]:
    """JPEG bytes -> (uint8 (N, size, size) tensor on `device`, N error strings, "" where fine).

    One batched decode call; when it fails (a corrupt file fails the whole batch), each file is
    decoded alone so that only the bad ones become errors.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    out = torch.zeros((len(data), size, size), dtype=torch.uint8, device=device)
    errors = [""] * len(data)
    try:
        images = decode_jpeg(data, mode=ImageReadMode.GRAY, device=device) if data else []
    except RuntimeError:
        images = []
        for i, d in enumerate(data):
            try:
                images.append(decode_jpeg(d, mode=ImageReadMode.GRAY, device=device))
            except RuntimeError as e:
                images.append(None)
                errors[i] = f"corrupt JPEG: {str(e).splitlines()[0][:200]}"
    for i, image in enumerate(images):
        if image is None:
            continue
        try:
            out[i] = stretch_and_resize(image.to(device), size)
        except ValueError as e:
            errors[i] = str(e)
    return out, errors


def stretch_and_resize(gray, size: int):
    """uint8 (1, H, W) -> uint8 (size, size), as transforms.decode's JPEG path does it on the CPU:
    reduce by the power of two Pillow's draft mode would (a mean over s x s blocks standing in for
    its DCT-domain scaling), stretch min..max to 0..255 (rounded half to even, as
    transforms.quantise), then bilinear with antialiasing, aspect not kept (as resize_square)."""
    import torch
    import torch.nn.functional as F

    x = gray.float()[None]  # (1, 1, H, W)
    s = draft_scale(*gray.shape[-2:], size)
    if s > 1:
        x = F.avg_pool2d(x, s, ceil_mode=True)
    lo, hi = x.min(), x.max()
    if lo == hi:
        raise ValueError(f"image is constant (every pixel is {float(lo):g}); it carries no signal")
    x = torch.round(((x - lo) / (hi - lo)).clamp(0, 1) * 255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8)[0, 0]


def draft_scale(height: int, width: int, size: int) -> int:
    """The largest of 1, 2, 4, 8 that keeps both sides >= size, as Pillow's JPEG draft picks it."""
    return max(s for s in (1, 2, 4, 8) if -(-height // s) >= size and -(-width // s) >= size or s == 1)
