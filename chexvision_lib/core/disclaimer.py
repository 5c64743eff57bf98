"""The one sentence every report, card, app and command that shows results carries."""

DISCLAIMER = (
    "Research and teaching use only. Not a medical device; not for clinical diagnosis or "
    "patient management."
)
