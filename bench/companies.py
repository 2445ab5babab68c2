"""A seeded generator of organisations in two registers, with the ground truth.

Each entity is a company (a core name, perhaps a distinguishing word such as "Holdings", a legal
form, a company number, an address in a town). It appears in register ``a`` (as registered) and
register ``b`` (as another body records it), or in one of them only. What makes it hard:

* legal-form variants (Ltd / Limited / Ltd. / none; PLC / Public Limited Company; LLP; & Co),
  "&" against "and", a leading "The", case and punctuation;
* abbreviations (Intl, Mfg, Eng, Svcs, Hldgs, Bros, …) and typos in names;
* trading names: register ``b`` sometimes holds a name unrelated to the registered one;
* moved postcodes (another address, perhaps another town), missing postcodes, towns and company
  numbers, postcode formatting;
* same-name firms: companies sharing a core name and legal form in other towns;
* sister companies: two to four companies at one address sharing a core name, told apart only
  by a distinguishing word (and their company numbers);
* industrial estates: postcodes shared by about twenty unrelated firms.

Rates are arguments; the defaults describe organisations in general, not any one dataset.
``python bench/companies.py 1000`` prints a sample.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import polars as pl

SURNAMES = (
    "smith jones taylor brown williams wilson johnson davies robinson wright thompson evans "
    "walker white roberts green hall wood jackson clarke patel khan lewis james phillips mason "
    "mitchell rose davis rodriguez cox alexander morgan moore martin price scott hughes turner "
    "baker harris cooper king lee ward edwards morris parker bennett carter shaw collins bell "
    "murphy allen young hill campbell kelly stewart russell marshall cook watson gray ellis "
    "fletcher grant knight hunt palmer holmes mills lloyd butler barker owen gibson ryan spencer"
).split()
WORDS = (
    "acme apex summit phoenix meridian northern southern eastern western central riverside "
    "oakwood pinnacle crown anchor beacon harbour granite vertex atlas orion sterling regent "
    "premier quantum horizon lakeside hillside castle bridge forge valley evergreen silverline "
    "bluebird redwood ironside keystone landmark milestone nova pioneer quay rapid solent "
    "thames trent severn pennine cotswold chiltern mercia wessex albion britannia caledonian"
).split()
TRADES = (
    "engineering plumbing electrical catering joinery motors printing construction logistics "
    "manufacturing roofing glazing haulage builders architects accountants solicitors dental "
    "veterinary pharmacy bakery brewery textiles plastics packaging software consultants "
    "recruitment cleaning security scaffolding landscapes interiors autos tyres fabrications"
).split()
DISTINGUISHING = ["Holdings", "Trading", "Services", "Group", "Properties", "Investments"]
STREETS = (
    "High Street|Station Road|Church Lane|Mill Road|Park Avenue|Victoria Road|London Road|"
    "Queens Road|Kings Way|Market Place|Bridge Street|North Street|Albert Road|Green Lane"
).split("|")
ABBREVIATE = {
    "engineering": "Eng",
    "manufacturing": "Mfg",
    "international": "Intl",
    "services": "Svcs",
    "holdings": "Hldgs",
    "brothers": "Bros",
    "construction": "Constr",
    "properties": "Props",
    "investments": "Invs",
    "group": "Grp",
}
LEGAL = [("Ltd", 0.62), ("PLC", 0.05), ("LLP", 0.08), ("& Co", 0.05), ("", 0.20)]
LEGAL_VARIANTS = {
    "Ltd": ["Ltd", "Limited", "Ltd.", "LIMITED", ""],
    "PLC": ["PLC", "plc", "Public Limited Company", "P.L.C."],
    "LLP": ["LLP", "L.L.P.", "Limited Liability Partnership"],
    "& Co": ["& Co", "and Co", "& Company", "and Company"],
    "": [""],
}
LETTERS = "ABDEFGHJLNPQRSTUWXYZ"
SUFFIXES = ["ford", "ton", "bury", "ham", "ley", "wick"]


@dataclass
class Rates:
    """Probabilities of each kind of variation (per entity or per record)."""

    in_both: float = 0.7
    sister_groups: float = 0.06
    same_name: float = 0.08
    estate_share: float = 0.15
    trading_name: float = 0.06
    moved: float = 0.07
    missing_postcode: float = 0.10
    missing_town: float = 0.10
    number_in_b: float = 0.35
    abbreviate: float = 0.20
    typo: float = 0.15
    swap_and: float = 0.5
    the: float = 0.08
    upper: float = 0.3


def _typo(word: str, rng: np.random.Generator) -> str:
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 1))
    kind = rng.integers(0, 3)
    if kind == 0:
        return word[:i] + word[i + 1 :]
    if kind == 1:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    return word[:i] + "abcdefghijklmnopqrstuvwxyz"[int(rng.integers(0, 26))] + word[i + 1 :]


def _core(rng: np.random.Generator) -> list[str]:
    kind = rng.integers(0, 4)
    if kind == 0:
        return [str(rng.choice(SURNAMES)), str(rng.choice(TRADES))]
    if kind == 1:
        return [str(rng.choice(WORDS)), str(rng.choice(TRADES))]
    if kind == 2:
        a, b = rng.choice(SURNAMES, 2, replace=False)
        return [str(a), "&", str(b)]
    return [str(rng.choice(WORDS)), str(rng.choice(WORDS)), str(rng.choice(TRADES))]


def _postcode(district: str, rng: np.random.Generator) -> str:
    return f"{district} {rng.integers(1, 10)}{rng.choice(list(LETTERS))}{rng.choice(list(LETTERS))}"


def _render(entity: dict, rng: np.random.Generator, rates: Rates, register: str) -> dict:
    """One record of ``entity`` as ``register`` holds it."""
    words = list(entity["core"])
    if register == "b" and rng.random() < rates.trading_name:
        words = _core(rng)  # a trading name, unrelated to the registered one
        distinguishing, legal = "", ""
    else:
        distinguishing, legal = entity["distinguishing"], entity["legal"]
    words = [w.lower() for w in words]
    if distinguishing:
        words.append(distinguishing.lower())
    out = []
    for w in words:
        if w == "&":
            out.append("and" if rng.random() < rates.swap_and else "&")
        elif w in ABBREVIATE and rng.random() < rates.abbreviate:
            out.append(ABBREVIATE[w])
        elif rng.random() < rates.typo / len(words):
            out.append(_typo(w, rng).capitalize())
        else:
            out.append(w.capitalize())
    form = (
        str(rng.choice(LEGAL_VARIANTS[legal])) if register == "b" or legal != "Ltd" else "Limited"
    )
    name = " ".join(out + ([form] if form else []))
    if rng.random() < rates.the:
        name = "The " + name
    if rng.random() < rates.upper:
        name = name.upper()

    postcode, town, address = entity["postcode"], entity["town"], entity["address"]
    if register == "b" and rng.random() < rates.moved:
        town, district = entity["elsewhere"]
        postcode = _postcode(district, rng)
        address = f"{rng.integers(1, 200)} {rng.choice(STREETS)}"
    if register == "b":
        if rng.random() < rates.missing_postcode:
            postcode = None
        elif rng.random() < 0.3:
            postcode = postcode.replace(" ", "").lower()
        if rng.random() < rates.missing_town:
            town = None
        if address and rng.random() < 0.3:
            address = address.replace("Street", "St").replace("Road", "Rd").replace(",", "")
    number = entity["number"]
    if number and register == "b":
        number = (
            (number.lstrip("0") if rng.random() < 0.3 else number)
            if (rng.random() < rates.number_in_b)
            else None
        )
    return {
        "name": name,
        "address": address,
        "town": town.upper() if town and rng.random() < 0.3 else town,
        "postcode": postcode,
        "company_number": number,
    }


def generate_companies(
    n_entities: int, seed: int = 7, rates: Rates | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Registers ``a`` and ``b`` (``key``, name, address, town, postcode, company_number) and
    the truth (``source``, ``key``, ``entity``)."""
    rates = rates or Rates()
    rng = np.random.default_rng(seed)
    n_towns = max(20, n_entities // 150)
    towns = [f"{rng.choice(WORDS).capitalize()}{rng.choice(SUFFIXES)}" for _ in range(n_towns)]
    districts = [
        f"{rng.choice(list(LETTERS))}{rng.choice(list(LETTERS))}{i % 99 + 1}"
        for i in range(n_towns)
    ]
    estates = max(1, int(n_entities * rates.estate_share / 20))
    estate_at = rng.integers(0, n_towns, estates)
    estate_postcode = [_postcode(districts[t], rng) for t in estate_at]
    units = [0] * estates
    numbers = rng.choice(10**8, size=n_entities * 2, replace=False)
    entities: list[dict] = []
    legal_forms, weights = zip(*LEGAL, strict=True)
    while len(entities) < n_entities:
        town = int(rng.integers(0, n_towns))
        core = _core(rng)
        legal = str(rng.choice(legal_forms, p=weights))
        on_estate = rng.random() < rates.estate_share
        if on_estate:
            estate = int(rng.integers(0, estates))
            town = int(estate_at[estate])
            postcode = estate_postcode[estate]
            units[estate] += 1  # one firm (or group of sisters) a unit
            address = f"Unit {units[estate]}, {towns[town]} Industrial Estate"
        else:
            postcode = _postcode(districts[town], rng)
            address = f"{rng.integers(1, 200)} {rng.choice(STREETS)}"
        r = rng.random()
        if r < rates.sister_groups:  # sister companies at one address
            tokens = list(rng.choice(["", *DISTINGUISHING], rng.integers(2, 5), replace=False))
        else:
            tokens = [str(rng.choice(DISTINGUISHING)) if rng.random() < 0.2 else ""]
        copies = [(town, postcode, address)]
        if rates.sister_groups <= r < rates.sister_groups + rates.same_name:
            other = int(rng.integers(0, n_towns))  # a same-name firm in another town
            copies.append(
                (
                    other,
                    _postcode(districts[other], rng),
                    f"{rng.integers(1, 200)} {rng.choice(STREETS)}",
                )
            )
        for t, pc, addr in copies:
            for token in tokens:
                moved_to = int(rng.integers(0, n_towns))
                entities.append(
                    {
                        "core": core,
                        "distinguishing": token,
                        "legal": legal,
                        "number": f"{numbers[len(entities)]:08d}" if legal != "" else None,
                        "town": towns[t],
                        "postcode": pc,
                        "address": addr,
                        "elsewhere": (towns[moved_to], districts[moved_to]),
                    }
                )
    entities = entities[:n_entities]
    rows = {"a": [], "b": []}
    truth = []
    for e, entity in enumerate(entities):
        r = rng.random()
        registers = (
            ("a", "b") if r < rates.in_both else ("a",) if r < (1 + rates.in_both) / 2 else ("b",)
        )
        for register in registers:
            record = _render(entity, rng, rates, register)
            key = f"{register}{len(rows[register])}"
            rows[register].append({"key": key, **record})
            truth.append({"source": register, "key": key, "entity": e})
    schema = {
        c: pl.String for c in ("key", "name", "address", "town", "postcode", "company_number")
    }
    a = pl.DataFrame(rows["a"], schema=schema)
    b = pl.DataFrame(rows["b"], schema=schema)
    return (
        a,
        b,
        pl.DataFrame(truth, schema={"source": pl.String, "key": pl.String, "entity": pl.Int64}),
    )


# --- Splink alone: what a competent user would write ---------------------------------------


def simple_clean(frame: pl.DataFrame) -> pl.DataFrame:
    """The records with the cleaning a competent user writes for Splink alone (``*_s`` columns):
    lower case, "&" as "and", no punctuation, no leading "the" or trailing legal form; postcodes
    upper-cased with one space; company numbers without spaces."""
    name = (
        pl.col("name")
        .str.to_lowercase()
        .str.replace_all("&", " and ", literal=True)
        .str.replace_all(r"[^a-z0-9 ]", "")
        .str.replace_all(r"\s+", " ")
        .str.strip_chars()
        .str.replace(r"^the ", "")
        .str.replace(r" (limited|ltd|plc|llp|and co|co)$", "")
    )
    compact = pl.col("postcode").str.to_uppercase().str.replace_all(r"[^A-Z0-9]", "")
    postcode = pl.concat_str(
        compact.str.slice(0, compact.str.len_chars() - 3), pl.lit(" "), compact.str.slice(-3)
    )
    return frame.with_columns(
        name.alias("name_s"),
        postcode.alias("postcode_s"),
        pl.col("town").str.to_lowercase().alias("town_s"),
        pl.col("address").str.to_lowercase().str.replace_all(r"[^a-z0-9 ]", "").alias("address_s"),
        pl.col("company_number").str.replace_all(r"\s", "").alias("company_number_s"),
    )


def splink_alone() -> tuple[dict, list[dict]]:
    """Splink settings and training over :func:`simple_clean`'s columns: name Jaro-Winkler levels
    with term frequencies, postcode, town, address, company number; EM; as a user writes them."""
    settings = {
        "comparisons": [
            {
                "comparison": "JaroWinklerAtThresholds",
                "col_name": "name_s",
                "score_threshold_or_thresholds": [0.95, 0.88, 0.8],
                "term_frequency_adjustments": True,
            },
            {
                "comparison": "PostcodeComparison",
                "col_name": "postcode_s",
                "term_frequency_adjustments": True,
            },
            {"comparison": "ExactMatch", "col_name": "town_s", "term_frequency_adjustments": True},
            {
                "comparison": "ExactMatch",
                "col_name": "address_s",
                "term_frequency_adjustments": True,
            },
            {"comparison": "ExactMatch", "col_name": "company_number_s"},
        ],
        "blocking_rules_to_generate_predictions": [
            f"l.{c} = r.{c}" for c in ("name_s", "postcode_s", "address_s", "company_number_s")
        ],
    }
    from matchbox_dagster.methods.models.splink import comparison

    settings["comparisons"] = [
        comparison(c).get_comparison("duckdb").as_dict() for c in settings["comparisons"]
    ]
    training = [
        {
            "estimate_probability_two_random_records_match": {
                "deterministic_matching_rules": [
                    "l.name_s = r.name_s and l.postcode_s = r.postcode_s"
                ],
                "recall": 0.7,
            }
        },
        {"estimate_u_using_random_sampling": {"max_pairs": 1e6, "seed": 1}},
        {
            "estimate_parameters_using_expectation_maximisation": {
                "blocking_rule": "l.postcode_s = r.postcode_s"
            }
        },
        {
            "estimate_parameters_using_expectation_maximisation": {
                "blocking_rule": "l.name_s = r.name_s"
            }
        },
    ]
    return settings, training


if __name__ == "__main__":
    a, b, truth = generate_companies(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
    with pl.Config(tbl_rows=30, fmt_str_lengths=60, tbl_width_chars=200):
        print(
            a.head(15), b.head(15), truth.group_by("entity").len().get_column("len").value_counts()
        )
