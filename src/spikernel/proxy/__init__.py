"""Training-free proxies: SNASNet's SAHD score (``proxy.sahd``), the published zero-cost proxies
adapted to SNNs (``proxy.zero_cost``), rank votes (``proxy.combine``) and their evaluation against
trained accuracy (``proxy.quality``)."""

# What searches rank by unless told otherwise; docs/EVIDENCE.md has what the ground truth says of each.
DEFAULT_PROXY = "sahd"
PROXY_NAMES = ("params", "sahd", "naswot", "synflow", "snip", "grad_norm", "jacob_cov", "zico")  # zero_cost.PROXIES
# Rank votes (``combine.rank_vote``) a search or ``score`` can rank by: the mean rank over these proxies
# among the candidates ranked together, so a candidate's vote is relative to the others.
# ``synflow+params`` is the cheap one: data-free SynFlow (a tenth of SAHD's time) and the size.
VOTES = {"vote": PROXY_NAMES[1:], "vote+params": PROXY_NAMES, "synflow+params": ("synflow", "params")}
RANKINGS = PROXY_NAMES + tuple(VOTES)  # every name --proxy takes


def members(ranking: str) -> tuple[str, ...]:
    """The proxies a ranking computes: a vote's members, else the proxy itself."""
    return VOTES.get(ranking, (ranking,))
