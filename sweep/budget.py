"""Target sets at an equal budget (LoRA, Hu et al. 2021, Table 5: "which matrices, at a fixed budget of
trainable parameters?"): the rank each target set gets for a budget of LoRA parameters. Pure arithmetic, no
I/O: the decisions (``sweep/decide.py``, ``sweep.mode=budget``), the driver's checks and the report use it.

A budget counts the adapter's (LoRA) parameters: r·Σ(d+k) over the matrices a set adapts, with
``params_per_rank`` [targets key] = Σ(d+k) (``sweep.driver.params_per_rank``). The head's parameters are the
same for every set, so they are not part of a budget (the report shows the trainable total too).

MiniLM (6 layers, d_model 384, d_ff 1536; q,k,v,o 384×384, up 384→1536, down 1536→384): the budget of r=8 on
q,v is 8·(384+384)·2·6 = 73,728 LoRA parameters; q,k,v,o (18,432 a rank) get r=4, up,down (23,040 a rank:
3.2) r=3, all-linear (41,472 a rank: 1.78) r=2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple, Union

from sweep.config import SweepSettings, targets_key
from sweep.errors import UserError

#: an entry of ``sweep.budgets`` as the schema holds it (``sweep.config._budget_entry``): LoRA parameters, or
#: ``{"r": r, "targets": [...]}``
BudgetEntry = Union[int, Mapping]


@dataclass(frozen=True)
class Budget:
    """One budget of a ``budget`` sweep.

    Attributes:
        params: the budget, LoRA parameters.
        ranks: targets key -> the rank that set gets (``rank_for``), in the order the sets are compared: the
            start targets first, then the others cheapest per rank first (``compared_sets``).
        lora_params: targets key -> its LoRA parameters at that rank, r·params_per_rank (same order).
        given: the configuration the budget was given as, (r, targets key); None when given as a count.
    """

    params: int
    ranks: Dict[str, int]
    lora_params: Dict[str, int]
    given: Optional[Tuple[int, str]] = None

    def configs(self) -> List[Tuple[int, str]]:
        """(r, targets key) of every set at this budget, in the order compared (the start targets first)."""
        return [(r, t) for t, r in self.ranks.items()]


def entry_text(entry: BudgetEntry) -> str:
    """An entry of ``sweep.budgets`` as a user writes it: ``73728`` or ``{r: 8, targets: [q,v]}``."""
    if isinstance(entry, int):
        return str(entry)
    return f"{{r: {entry['r']}, targets: [{targets_key(entry['targets'])}]}}"


def budget_targets(settings: SweepSettings) -> List[List[str]]:
    """The target sets that ``settings.budgets`` names (the configurations budgets are given as), each once."""
    sets = [list(b["targets"]) for b in settings.budgets if not isinstance(b, int)]
    return list({targets_key(t): t for t in sets}.values())


def compared_sets(settings: SweepSettings, params_per_rank: Mapping[str, int]) -> List[str]:
    """The targets keys a budget sweep trains: ``start_targets`` first (each other set is compared with it),
    then ``target_sets`` cheapest per rank first (the first of equals as listed), each once."""
    start = targets_key(settings.start_targets)
    others = [t for t in dict.fromkeys(targets_key(x) for x in settings.target_sets) if t != start]
    return [start, *sorted(others, key=lambda t: params_per_rank[t])]


def rank_for(budget: int, per_rank: int) -> int:
    """The rank r ≥ 0 whose r·``per_rank`` LoRA parameters are nearest ``budget``; an exact half rounds down
    (the budget is not exceeded). 0: the set's r=1 costs at least twice the budget. Integer arithmetic."""
    low = budget // per_rank
    return low + 1 if 2 * (budget - low * per_rank) > per_rank else low


def budget_ranks(settings: SweepSettings, params_per_rank: Mapping[str, int]) -> List[Budget]:
    """Every budget of ``settings.budgets``, in order, with the rank each set of ``compared_sets`` gets.

    Args:
        settings: a sweep's settings (``budgets``, ``start_targets``, ``target_sets``).
        params_per_rank: LoRA parameters per unit of rank of every set they name (the compared sets and
            those the budgets are given on), by targets key.

    Raises:
        UserError: a budget below the r=1 cost of every compared set, one at which a set would get r=0
            (its r=1 costs at least twice the budget), or one given twice; the message names
            ``sweep.budgets``, the entry and the least budget that is valid.
    """
    sets = compared_sets(settings, params_per_rank)
    out = []
    for entry in settings.budgets:
        if isinstance(entry, int):
            params, given = entry, None
        else:
            given = (entry["r"], targets_key(entry["targets"]))
            params = given[0] * params_per_rank[given[1]]
        shown = f"sweep.budgets holds {entry_text(entry)}" + ("" if given is None else f" = {params:,} LoRA parameters")
        cheapest = min(sets, key=lambda t: params_per_rank[t])
        if params < params_per_rank[cheapest]:
            raise UserError(
                f"{shown}, below the r=1 cost of every target set (the cheapest, {cheapest}, costs "
                f"{params_per_rank[cheapest]:,}): give a budget of at least {params_per_rank[cheapest]:,} LoRA parameters"
            )
        ranks = {t: rank_for(params, params_per_rank[t]) for t in sets}
        # the binding set first: the dearest of those that cannot get r ≥ 1 names the budget every set needs
        for t, r in sorted(ranks.items(), key=lambda item: -params_per_rank[item[0]]):
            if r == 0:
                instead = (
                    "start with another set (sweep.start_targets)"
                    if t == sets[0]
                    else f"leave {t} out of sweep.target_sets"
                )
                raise UserError(
                    f"{shown}: target set {t} costs {params_per_rank[t]:,} LoRA parameters at r=1, at least twice "
                    f"the budget, so it cannot get r ≥ 1; give a budget of at least {params_per_rank[t] // 2 + 1:,}, "
                    f"or {instead}"
                )
        if any(b.params == params for b in out):
            raise UserError(f"{shown}, a budget given before: give each budget once")
        out.append(Budget(params, ranks, {t: r * params_per_rank[t] for t, r in ranks.items()}, given))
    return out
