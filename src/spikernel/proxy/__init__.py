"""Training-free proxies: SNASNet's SAHD score (``proxy.sahd``), the published zero-cost proxies
adapted to SNNs (``proxy.zero_cost``), rank votes (``proxy.combine``) and their evaluation against
trained accuracy (``proxy.quality``)."""

# What searches rank by unless told otherwise; docs/EVIDENCE.md has what the ground truth says of each.
DEFAULT_PROXY = "sahd"
PROXY_NAMES = ("params", "sahd", "naswot", "synflow", "snip", "grad_norm", "jacob_cov", "zico")  # zero_cost.PROXIES
