"""The released ResShift models as plain data: files, URLs and the official config values.

Values are those of the official configs (journal branch 3ce1d81; v1/v2 from the NeurIPS config).
`tile`/`overlap` are the default chop size/overlap in LR pixels (the official app uses 256/224
stride for x4; scale-1 tasks multiply both by 4).
"""

from __future__ import annotations

from ..weights import WeightFile

RELEASE = "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/"


def _release(name: str, url_name: str | None = None) -> WeightFile:
    url_name = url_name or name
    return WeightFile(name, RELEASE + url_name, aliases=(url_name,) if url_name != name else ())


_UNET_BASE = dict(image_size=64, in_channels=3, model_channels=160, out_channels=3,
                  attention_resolutions=[64, 32, 16, 8], dropout=0, channel_mult=[1, 2, 2, 4],
                  num_res_blocks=[2, 2, 2, 2], conv_resample=True, dims=2, use_fp16=False,
                  num_head_channels=32, use_scale_shift_norm=True, resblock_updown=False, swin_depth=2,
                  swin_embed_dim=192, window_size=8, mlp_ratio=4, cond_lq=True, lq_size=64)
UNET_REALSR = dict(_UNET_BASE)
UNET_REALSR_X2 = dict(_UNET_BASE, lq_size=128)
UNET_INPAINT = dict(_UNET_BASE, cond_mask=True, lq_size=256)
UNET_FACEIR = dict(_UNET_BASE, in_channels=8, out_channels=8, lq_size=512)

VQ_F4 = dict(embed_dim=3, n_embed=8192, ddconfig=dict(double_z=False, z_channels=3, resolution=256, in_channels=3,
                                                      out_ch=3, ch=128, ch_mult=[1, 2, 4], num_res_blocks=2,
                                                      attn_resolutions=[], dropout=0.0))
VQ_F8_FACE = dict(embed_dim=8, n_embed=4096, ddconfig=dict(double_z=False, z_channels=8, resolution=512, in_channels=3,
                                                           out_ch=3, ch=64, ch_mult=[1, 2, 4, 8],
                                                           num_res_blocks=[1, 2, 3, 4], attn_resolutions=[], dropout=0.0))

CHAIN_V1 = dict(steps=15, min_noise_level=0.04, kappa=2.0, etas_end=0.99, power=0.3)
CHAIN_JOURNAL = dict(steps=4, min_noise_level=0.2, kappa=2.0, etas_end=0.99, power=0.3)

VQ_FILES = {
    "vq-f4": (_release("autoencoder_vq_f4.pth"), VQ_F4),
    "vq-f4-face256": (_release("celeba256_vq_f4_dim3_face.pth"), VQ_F4),
    "vq-f8-face512": (_release("ffhq512_vq_f8_dim8_face.pth"), VQ_F8_FACE),
}

PRESETS: dict[str, dict] = {
    "realsr-v1": dict(unet_file=_release("resshift_realsrx4_s15_v1.pth"), unet=UNET_REALSR, vq="vq-f4", chain=CHAIN_V1,
                      scale=4, task="realsr", tile=256, overlap=32,
                      description="ResShift v1 real-world x4 SR, 15 steps (NeurIPS 2023)"),
    "realsr-v2": dict(unet_file=_release("resshift_realsrx4_s15_v2.pth"), unet=UNET_REALSR, vq="vq-f4", chain=CHAIN_V1,
                      scale=4, task="realsr", tile=256, overlap=32,
                      description="ResShift v2 real-world x4 SR, 15 steps (500k iterations)"),
    "realsr-v3": dict(unet_file=_release("resshift_realsrx4_s4_v3.pth"), unet=UNET_REALSR, vq="vq-f4", chain=CHAIN_JOURNAL,
                      scale=4, task="realsr", tile=256, overlap=32,
                      description="ResShift v3 real-world x4 SR, 4 steps (journal version)"),
    "bicsr": dict(unet_file=_release("resshift_bicsrx4_s4.pth"), unet=UNET_REALSR, vq="vq-f4", chain=CHAIN_JOURNAL,
                  scale=4, task="bicsr", tile=256, overlap=32,
                  description="ResShift x4 SR of MATLAB-bicubic-downscaled images, 4 steps"),
    "inpaint-imagenet": dict(unet_file=_release("resshift_inpaint_imagenet_s4.pth", "resshift_inpainting_imagenet_s4.pth"),
                             unet=UNET_INPAINT, vq="vq-f4", chain=CHAIN_JOURNAL, scale=1, task="inpaint",
                             tile=1024, overlap=128, description="ResShift inpainting (ImageNet), 4 steps; needs --mask"),
    "inpaint-face": dict(unet_file=_release("resshift_inpaint_face_s4.pth", "resshift_inpainting_face_s4.pth"),
                         unet=UNET_INPAINT, vq="vq-f4-face256", chain=CHAIN_JOURNAL, scale=1, task="inpaint",
                         tile=1024, overlap=128, description="ResShift face inpainting (FFHQ 256), 4 steps; needs --mask"),
    "faceir": dict(unet_file=_release("resshift_faceir_s4.pth"), unet=UNET_FACEIR, vq="vq-f8-face512", chain=CHAIN_JOURNAL,
                   scale=1, task="faceir", tile=2048, overlap=256,
                   description="ResShift blind face restoration (512x512 aligned faces), 4 steps"),
}
