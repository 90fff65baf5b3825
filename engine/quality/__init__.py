"""How good an edit is: the evaluation run and its metrics (warp error, PSNR, SSIM). No bpy, no model."""
