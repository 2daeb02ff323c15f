"""A tanh RNN language model written out by hand, with the mathematics of `nn.SimpleCell`.

    h_t = tanh(x_t W_xh + h_{t-1} W_hh + b_h)
    o_t = h_t W_hq + b_q

x_t is the one-hot character (V,), h_t the hidden state (H,), o_t the logits (V,).
`params_from_rnn` maps the parameters of a one-layer `rnn` model onto these
names, so both models give the same logits on the same weights.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.config import ModelConfig


class ScratchRNNLM(nn.Module):
    """One-layer tanh RNN with explicit weights; same call signature as `RNNLM`."""

    config: ModelConfig
    sigma: float = 0.01  # std of the normal initializer for all weights

    @nn.compact
    def __call__(self, inputs, carry=None, *, deterministic: bool = True):
        """inputs int32 (B, T) -> (carry, logits float32 (B, T, V)); carry is a 1-tuple of (B, H)."""
        vocab_size, num_hiddens = self.config.vocab_size, self.config.num_hiddens
        normal = nn.initializers.normal(self.sigma)
        W_xh = self.param("W_xh", normal, (vocab_size, num_hiddens))
        W_hh = self.param("W_hh", normal, (num_hiddens, num_hiddens))
        b_h = self.param("b_h", nn.initializers.zeros, (num_hiddens,))
        W_hq = self.param("W_hq", normal, (num_hiddens, vocab_size))
        b_q = self.param("b_q", nn.initializers.zeros, (vocab_size,))

        if carry is None:
            carry = (jnp.zeros((inputs.shape[0], num_hiddens), jnp.float32),)
        x = jax.nn.one_hot(inputs, vocab_size)  # (B, T, V)
        x = nn.Dropout(self.config.input_dropout)(x, deterministic=deterministic)

        def step(h, x_t):  # h: (B, H), x_t: (B, V)
            h = jnp.tanh(x_t @ W_xh + h @ W_hh + b_h)
            return h, h

        h, hs = jax.lax.scan(step, carry[0], jnp.swapaxes(x, 0, 1))  # hs: (T, B, H)
        hs = nn.Dropout(self.config.dropout)(jnp.swapaxes(hs, 0, 1), deterministic=deterministic)
        logits = hs @ W_hq + b_q  # (B, T, V)
        return (h,), logits


def params_from_rnn(rnn_params: dict) -> dict:
    """Map one-layer `rnn` (SimpleCell) parameters onto the scratch names."""
    cell = rnn_params["layer0"]
    return {
        "W_xh": cell["i"]["kernel"], "b_h": cell["i"]["bias"], "W_hh": cell["h"]["kernel"],
        "W_hq": rnn_params["head"]["kernel"], "b_q": rnn_params["head"]["bias"],
    }
