"""Step time of the first-stage autoencoder (model=autoencoder) trained through genlab vs a plain
PyTorch loop doing the same math.

    python bench/autoencoder_step_time.py [--regularizer kl|vq] [--disc] [--epochs 3] [--rounds 3]
        [--clock wall|cpu] [config overrides ...]

Both train the same model (same init, same batches from the same DataLoader, same Adam) in one
process; rounds alternate between them so machine noise hits both alike. How a step is timed:
bench/timing.py. Per batch both do what `AutoencoderModule.training_step` does: encode, regularise
(a posterior sample and its KL, or the codebook with its EMA and restarts), decode, the L1 loss, one
Adam step, and the latent-scale tracking (`scale_factor`, refreshed every step). With `--disc` the
patch discriminator is on from the first step (`model.disc_start=0`): the autoencoder step adds the
GAN term with VQGAN's adaptive weight (two extra gradients at the decoder's last layer), then one
discriminator step on real and reconstructed images; genlab runs it under manual optimization.
The default data is data=mnist5k (28x28 -> 7x7x4 latents); `trainer.limit_train_batches=N` shortens
the epochs on both sides.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import timing
import torch


def autoencoder_loss(model, x, y):
    out = model.terms(x, sample=True)
    loss = model.reconstruction_loss(out.recon, x) + out.reg
    model._track_scale(out.z)
    model.ae_steps += 1
    return loss


def adversarial_step(model, optimizers, x, y):
    """`AutoencoderModule._manual_step` with the discriminator on, without Lightning: D frozen during
    the autoencoder's step (Lightning's optimizer toggling does the same), then D's step."""
    opt_ae, opt_d = optimizers
    D, hp = model.discriminator, model.hparams
    D.requires_grad_(False)
    out = model.terms(x, sample=True)
    rec = model.reconstruction_loss(out.recon, x)
    g_loss = model.gan.generator(D(out.recon))
    loss = rec + out.reg + hp.disc_weight * model.adaptive_weight(rec, g_loss) * g_loss
    opt_ae.zero_grad(set_to_none=True)
    loss.backward()
    opt_ae.step()
    D.requires_grad_(True)
    model._track_scale(out.z)
    model.ae_steps += 1
    d_real, d_fake = D(torch.cat([x, out.recon.detach()])).chunk(2)
    d_loss = model.gan.discriminator(d_real, d_fake)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regularizer", choices=["kl", "vq"], default="kl")
    parser.add_argument("--disc", action="store_true", help="the patch discriminator on from step 0")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each")
    parser.add_argument("--clock", choices=tuple(timing.CLOCKS), default="wall", help=timing.CLOCK_HELP)
    args, overrides = parser.parse_known_args()
    timing.use_clock(args.clock)
    quiet = ["callbacks.progress.refresh_rate=0", "trainer.enable_model_summary=false"]
    disc = ["model.disc_start=0", "trainer.gradient_clip_val=null"] if args.disc else []
    model = ["model=autoencoder", "data=mnist5k", f"model.regularizer={args.regularizer}"]
    overrides = [*model, *disc, *quiet, *overrides]
    plain, ours, whole = [], [], []
    with tempfile.TemporaryDirectory() as log_dir:
        for _ in range(args.rounds):
            if args.disc:
                plain.append(timing.plain_epochs(overrides, args.epochs, step_of=adversarial_step))
            else:
                plain.append(timing.plain_epochs(overrides, args.epochs, autoencoder_loss))
            step, epoch = timing.genlab_epochs(overrides, args.epochs, log_dir)
            ours.append(step)
            whole.append(epoch)
    timing.report(overrides, args.clock, plain, ours, whole, goal="1.05")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
