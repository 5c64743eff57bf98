"""Hub access shared by every step that talks to the Hugging Face Hub: the token and branch names.

The token comes from the environment or the tools' own credential stores, never from a parameter."""

from __future__ import annotations

import os

TOKEN_ENV = "HF_TOKEN"


KAGGLE_ENV = "KAGGLE_KERNEL_RUN_TYPE"  # set by Kaggle in every notebook session


KAGGLE_SECRET_NAME = "HF_TOKEN"


class MissingTokenError(RuntimeError):
    """No Hugging Face token in any of the places `resolve_token` looks."""


def _kaggle_secret(name: str) -> str | None:
    """A Kaggle notebook secret; None off Kaggle or when the secret is not attached."""
    if not os.environ.get(KAGGLE_ENV):
        return None
    try:
        from kaggle_secrets import UserSecretsClient  # exists only inside Kaggle notebooks
    except ImportError:
        return None
    try:
        return UserSecretsClient().get_secret(name) or None
    except Exception:  # Kaggle raises its own error types for absent or unattached secrets
        return None


def _login_store_token() -> str | None:
    import huggingface_hub

    return huggingface_hub.get_token()


def resolve_token() -> str:
    """The Hugging Face token: $HF_TOKEN, else huggingface_hub's login, else the Kaggle secret
    HF_TOKEN (in a Kaggle notebook). There is deliberately no parameter: a token passed as an
    argument ends up in notebooks, shell history and logs."""
    token = (
        os.environ.get(TOKEN_ENV, "").strip()
        or _login_store_token()
        or _kaggle_secret(KAGGLE_SECRET_NAME)
    )
    if not token:
        raise MissingTokenError(
            "no Hugging Face token found. Provide one (a write token) in one of three ways:\n"
            f"  1. the environment variable {TOKEN_ENV} (e.g. export {TOKEN_ENV}=... in a shell "
            "that is not logged);\n"
            "  2. huggingface_hub's login store: run `hf auth login` (or "
            "`huggingface-cli login`) once on this machine;\n"
            f"  3. on Kaggle: Add-ons > Secrets, add a secret named {KAGGLE_SECRET_NAME} and "
            "attach it to this notebook.\n"
            "`chexvision push --dry-run` needs no token."
        )
    return token


def check_branch_name(revision: str | None) -> None:
    if (
        revision is not None
        and len(revision) == 40
        and all(c in "0123456789abcdef" for c in revision)
    ):
        raise ValueError(
            f"--revision {revision}: pushing needs a branch name; a commit hash cannot be "
            "committed to"
        )
