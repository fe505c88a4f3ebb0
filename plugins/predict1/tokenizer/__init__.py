"""The causal continuous video tokenizer Cosmos-Tokenize1-CV8x8x8-720p, in plain PyTorch.

A video of 1 + 8k frames in [-1, 1] maps to 1 + k latent frames with 16 channels at 1/8 of the size:

    x [B,3,1+8k,H,W] -> Haar wavelet patching (x4 in t, h, w) -> factorized causal convs, ResNet blocks,
    one hybrid down-sampling (x2 in t, h, w), spatial + causal temporal attention in the middle
    -> quant_conv -> latent [B,16,1+k,H/8,W/8]

and the decoder mirrors it, ending with the inverse Haar transform. Everything is causal in time: latent
frame j (j >= 1) sees pixel frames up to 8j only, and pixel frame t is decoded from latent frames up to
ceil(t/8) only. Frame 0 stands alone: the patcher repeats it ``patch_size`` times.

The parts: :mod:`.modules` (the network modules, with the released files' keys), :mod:`.chunked` (every module
run over chunks of frames, for bounded memory), :mod:`.model` (:class:`VideoTokenizer`: normalized latents),
:mod:`.loading` (the released ``encoder.jit``, ``decoder.jit`` and ``mean_std.pt``, read as data) and
:mod:`.fixtures` (random tokenizers written in those formats, for tests). The architecture parameters,
:class:`cosmos_plugins.predict1.params.TokenizerParams`, are torch-free and live with the other components'.
This package re-exports the names its importers use.
"""

from ..params import TokenizerParams
from .chunked import (
    DOWNSAMPLE_2X,
    PATCH_4X,
    UNPATCH_4X,
    UPSAMPLE_2X,
    causal_halo,
    decode_in_chunks,
    encode_in_chunks,
    run_in_time_chunks,
    same_length,
)
from .fixtures import randomize_, trace_shape, write_tokenizer_checkpoint
from .loading import DECODER_FILE, ENCODER_FILE, MEAN_STD_FILE, load_tokenizer, read_mean_std
from .model import VideoTokenizer, num_params
from .modules import (
    Downsample,
    Patcher3d,
    ResnetBlock,
    SpatialAttention,
    Unpatcher3d,
    Upsample,
    VideoDecoder,
    VideoEncoder,
)

__all__ = [
    "DECODER_FILE",
    "DOWNSAMPLE_2X",
    "ENCODER_FILE",
    "MEAN_STD_FILE",
    "PATCH_4X",
    "UNPATCH_4X",
    "UPSAMPLE_2X",
    "Downsample",
    "Patcher3d",
    "ResnetBlock",
    "SpatialAttention",
    "TokenizerParams",
    "Unpatcher3d",
    "Upsample",
    "VideoDecoder",
    "VideoEncoder",
    "VideoTokenizer",
    "causal_halo",
    "decode_in_chunks",
    "encode_in_chunks",
    "load_tokenizer",
    "num_params",
    "randomize_",
    "read_mean_std",
    "run_in_time_chunks",
    "same_length",
    "trace_shape",
    "write_tokenizer_checkpoint",
]
