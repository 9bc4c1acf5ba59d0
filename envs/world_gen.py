"""Generating the synthetic world (pure, deterministic): a seeded encyclopedia of invented
entities and its QA families.

Entities: countries, cities (in a country), people (born in a city, in a year), films
(directed by a person, released in a year) and companies (founded by a person, in a
year, headquartered in a city). Every entity has an *intro* passage (doc ``"<id>-0"``,
titled with its name) stating its own facts. Every relation fact is stated a second time
in a *fact passage* of the *object* (doc ``"<object id>-<k>"``), titled with the relation's
key phrase and the subject ("Founder of Lubul Foods") and carrying the context fact the
next hop needs, so each fact can be reached from either end and a key-phrase query
("founder of Lubul Foods birthplace") surfaces the later hop directly. Directors and
founders also get a list passage ("Films directed by X: A, B.").

Passages are one short line, from fixed templates (two paraphrases per intro). Names are
pronounceable, 2-3 syllables per word, from a small syllable inventory; the
``distractor_rate`` knob adds near-duplicate names.

Question families (each question records its valid strategies, see :mod:`tasks`):
``single_hop`` (direct / direct_confirm / reverse), ``multi_hop`` 2- and 3-hop bridges
(forward / combined / forward_confirm), ``comparison`` (a_first / b_first) and
``multi_answer`` (forward / forward_confirm).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from searchgym.envs.tasks import SPLITS, Question, Step, Strategy
from searchgym.retrieval.base import Document

GENERATOR_VERSION = 3


@dataclass(frozen=True)
class WorldConfig:
    """Size and knobs of a generated world. ``preset`` fills the counts left at 0."""

    preset: str = "small"
    seed: int = 0
    countries: int = 0
    cities: int = 0
    people: int = 0
    films: int = 0
    companies: int = 0
    questions_per_family: int = 0
    distractor_rate: float = 0.2
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)

    def resolved(self) -> "WorldConfig":
        if self.preset not in PRESETS:
            raise ValueError(f"unknown world preset {self.preset!r}; choose from {sorted(PRESETS)}")
        if not 0.0 <= self.distractor_rate <= 0.9:
            raise ValueError(f"distractor_rate must be in [0, 0.9], got {self.distractor_rate}")
        base = PRESETS[self.preset]
        vals = {k: (getattr(self, k) or base[k]) for k in base}
        return WorldConfig(preset=self.preset, seed=self.seed, distractor_rate=self.distractor_rate,
                           split_fractions=tuple(self.split_fractions), **vals)


PRESETS = {
    "smoke": dict(countries=4, cities=10, people=36, films=24, companies=12, questions_per_family=40),
    "small": dict(countries=12, cities=70, people=480, films=400, companies=200, questions_per_family=1500),
    "full": dict(countries=60, cities=700, people=6000, films=5000, companies=2500, questions_per_family=20000),
}

# --- names -------------------------------------------------------------------------

_ONSETS = "b d f g k l m n p r s t v z".split()
_VOWELS = "a e i o u".split()
_CODAS = ["", "", "n", "r", "l", "s"]
_FILM_NOUNS = "River Crown Garden Storm Mirror Lantern Harbor Winter Orchard Signal Comet Voyage".split()
_COMPANY_SUFFIX = "Works Labs Systems Foods Motors Textiles Press Energy".split()
_COUNTRY_SUFFIX = ["ia", "land", "ar", "ova"]


def _syllable(rng: random.Random, coda: bool) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + (rng.choice(_CODAS) if coda else "")


def _word(rng: random.Random, n: int) -> str:
    w = "".join(_syllable(rng, coda=(i == n - 1)) for i in range(n))
    return w.capitalize()


def _near_duplicate(rng: random.Random, name: str) -> str:
    """Change one vowel of the last invented word: 'Talo Benmar' -> 'Talo Benmor'."""
    words = name.split(" ")
    fixed = {"The", *_FILM_NOUNS, *_COMPANY_SUFFIX}
    j = max(i for i, w in enumerate(words) if w not in fixed)
    w = words[j]
    idx = [i for i, c in enumerate(w) if c.lower() in _VOWELS]
    i = rng.choice(idx)
    new = rng.choice([v for v in _VOWELS if v != w[i].lower()])
    words[j] = w[:i] + (new.upper() if i == 0 else new) + w[i + 1:]
    return " ".join(words)


class _Namer:
    """Draws unique names; with probability ``rate`` a near-duplicate of an earlier one.

    A one-word name never equals a word of another name (and vice versa), so a name found
    verbatim in a passage is that entity, not part of another's name.
    """

    def __init__(self, rng: random.Random, rate: float):
        self.rng, self.rate = rng, rate
        self.used: set[str] = set()
        self.words: set[str] = set()  # words of multi-word names
        self.singles: set[str] = set()  # one-word names

    def _ok(self, name: str) -> bool:
        if name in self.used:
            return False
        parts = name.split(" ")
        if len(parts) == 1:
            return name not in self.words
        return not any(p in self.singles for p in parts)

    def draw(self, make, pool: list[str]) -> str:
        for _ in range(1000):
            if pool and self.rng.random() < self.rate:
                name = _near_duplicate(self.rng, self.rng.choice(pool))
            else:
                name = make()
            if self._ok(name):
                self.used.add(name)
                parts = name.split(" ")
                (self.singles if len(parts) == 1 else self.words).update(parts if len(parts) > 1 else [name])
                pool.append(name)
                return name
        raise RuntimeError("name space exhausted; lower the entity counts")


# --- entities ----------------------------------------------------------------------


@dataclass
class Entity:
    eid: str
    etype: str  # person | city | country | film | company
    name: str
    facts: dict = field(default_factory=dict)  # relation -> entity id, attribute -> int


@dataclass
class World:
    """A generated (or loaded) world: config, entities, documents and questions by split."""

    config: WorldConfig
    entities: dict[str, Entity]
    documents: list[Document]
    questions: dict[str, list[Question]]

    def entity_of_doc(self, doc_id: str) -> str:
        return entity_of_doc(doc_id)


def entity_of_doc(doc_id: str) -> str:
    """The entity id a world doc belongs to: ``"E12-3" -> "E12"``."""
    return doc_id.rsplit("-", 1)[0]


def _entities(cfg: WorldConfig, rng: random.Random) -> dict[str, Entity]:
    namer = _Namer(rng, cfg.distractor_rate)
    ents: dict[str, Entity] = {}
    counter = [0]

    def add(etype: str, name: str, **facts) -> Entity:
        e = Entity(f"E{counter[0]}", etype, name, dict(facts))
        counter[0] += 1
        ents[e.eid] = e
        return e

    pools: dict[str, list[str]] = {t: [] for t in ("country", "city", "person", "film", "company")}
    countries = [add("country", namer.draw(lambda: _word(rng, rng.choice((1, 2))) + rng.choice(_COUNTRY_SUFFIX),
                                      pools["country"]),
                     population=rng.randint(2, 90)) for _ in range(cfg.countries)]
    cities = [add("city", namer.draw(lambda: _word(rng, rng.choice((2, 3))), pools["city"]),
                  located_in=countries[i % len(countries)].eid if i < len(countries) else rng.choice(countries).eid,
                  population=rng.randint(20, 990)) for i in range(cfg.cities)]
    people = [add("person", namer.draw(lambda: f"{_word(rng, 2)} {_word(rng, rng.choice((2, 3)))}", pools["person"]),
                  born_in=rng.choice(cities).eid, birth_year=rng.randint(1900, 1999)) for _ in range(cfg.people)]
    # Directors and founders are drawn from the people; a person may be both.
    directors = rng.sample(people, max(1, int(0.35 * len(people))))
    founders = rng.sample(people, max(1, int(0.25 * len(people))))
    for i in range(cfg.films):
        d = directors[i % len(directors)] if i < len(directors) else rng.choice(directors)
        add("film", namer.draw(lambda: f"The {_word(rng, 2)} {rng.choice(_FILM_NOUNS)}", pools["film"]),
            directed_by=d.eid, release_year=rng.randint(max(1920, d.facts["birth_year"] + 20), 2020))
    for i in range(cfg.companies):
        f = founders[i % len(founders)] if i < len(founders) else rng.choice(founders)
        add("company", namer.draw(lambda: f"{_word(rng, 2)} {rng.choice(_COMPANY_SUFFIX)}", pools["company"]),
            founded_by=f.eid, headquartered_in=rng.choice(cities).eid,
            founded_year=rng.randint(max(1920, f.facts["birth_year"] + 18), 2020))
    for e in ents.values():
        if e.etype == "person":
            e.facts["directs"] = []
            e.facts["founds"] = []
    for e in ents.values():
        if e.etype == "film":
            ents[e.facts["directed_by"]].facts["directs"].append(e.eid)
        if e.etype == "company":
            ents[e.facts["founded_by"]].facts["founds"].append(e.eid)
    return ents


def _with_article(prof: str) -> str:
    return ("an " if prof[0] in "aeiou" else "a ") + prof


def _profession(p: Entity) -> str:
    d, f = bool(p.facts["directs"]), bool(p.facts["founds"])
    if d and f:
        return "film director and entrepreneur"
    if d:
        return "film director"
    if f:
        return "entrepreneur"
    return ("writer", "painter", "scientist", "musician", "teacher")[int(p.eid[1:]) % 5]


# --- documents ---------------------------------------------------------------------
# Two kinds of passage, both short and one line:
#
# * the *intro* of an entity (doc "<id>-0", titled with its name) states its own facts in
#   one sentence that uses the name once ("Pakor Mogu is a painter, born in Tavil in 1950.");
# * a *fact passage* of an object o for each relation fact (s, rel, o) (doc "<o id>-<k>"),
#   titled with the relation's key phrase and the subject ("Founder of Lubul Foods") and
#   stating the fact from o's side plus the context fact the next hop needs ("Pakor Mogu,
#   born in Tavil in 1950, is the founder of Lubul Foods.").
#
# A query that names only an entity ("Lubul Foods") lands on its intro (title match); a
# query made of a key phrase and the subject ("founder of Lubul Foods", the reverse and
# combined strategies) lands on the object's fact passage, whose title it repeats. Dense
# encoders weigh invented names heavily, so that title match is what separates the two; the
# intros never use a key phrase (they say "made by", "set up by", "based in").

KEY = {  # relation of the subject -> key phrase of the object's fact passage
    "born_in": "hometown of",
    "located_in": "country of",
    "directed_by": "director of",
    "founded_by": "founder of",
    "headquartered_in": "headquarters of",
}

LIST_TITLE = {"directs": "Films directed by {s}", "founds": "Companies founded by {s}"}

T = {
    # intros: s is the entity (two paraphrases each)
    "country": ["{s} is a country with a population of {v} million.",
                "{s} is a country of {v} million people."],
    "city": ["{s} is a city in {o} with {v} thousand people.",
             "{s} is a city of {v} thousand people in {o}."],
    "person": ["{s} is {prof}, born in {o} in {v}.",
               "{s} is {prof} who was born in {v} in {o}."],
    "film": ["{s} is a film made by {o}, released in {v}.",
             "Made by {o}, the film {s} was released in {v}."],
    "company": ["{s} is a company set up by {o} in {v}, based in {c}.",
                "{s} was set up in {v} by {o} and is based in {c}."],
    # fact passages of the object o about the subject s, titled "<Key phrase> <s>". One
    # fixed wording each: the text opens with the title's phrase, which is what keeps a
    # key-phrase query on this passage rather than on the subject's intro (measured with
    # MiniLM: paraphrases here cost 5-15 points of that margin).
    "born_in": ["The hometown of {s} ({prof}) is {o}, a city in {k}."],
    "directs": ["Films directed by {s}: {v}."],
    "founds": ["Companies founded by {s}: {v}."],
    "located_in": ["The country of the city {s} is {o}, a country of {v} million people."],
    "directed_by": ["The director of {s} is {o}, born in {v} in {c}."],
    "founded_by": ["The founder of {s} is {o}, born in {v} in {c}."],
    "headquartered_in": ["The headquarters of {s} is {o}, a city in {k}."],
}


def _say(rng: random.Random, key: str, **kw) -> str:
    return rng.choice(T[key]).format(**kw)


def fact_title(rel: str, subject_name: str) -> str:
    """Title of the object-side passage of a fact: ``"Founder of Lubul Foods"``."""
    return f"{KEY[rel].capitalize()} {subject_name}"


def _documents(ents: dict[str, Entity], rng: random.Random) -> list[Document]:
    docs: list[Document] = []
    facts: dict[str, list[tuple[str, str]]] = {eid: [] for eid in ents}  # object id -> (title, text)

    def name(eid: str) -> str:
        return ents[eid].name

    for e in ents.values():
        s, f = e.name, e.facts
        if e.etype == "country":
            intro = _say(rng, "country", s=s, v=f["population"])
        elif e.etype == "city":
            intro = _say(rng, "city", s=s, o=name(f["located_in"]), v=f["population"])
            k = ents[f["located_in"]]
            facts[k.eid].append((fact_title("located_in", s), _say(rng, "located_in", o=k.name, s=s,
                                                                     v=k.facts["population"])))
        elif e.etype == "person":
            c = ents[f["born_in"]]
            intro = _say(rng, "person", s=s, prof=_with_article(_profession(e)), o=c.name, v=f["birth_year"])
            facts[c.eid].append((fact_title("born_in", s), _say(rng, "born_in", o=c.name, s=s, prof=_profession(e),
                                                                  k=name(c.facts["located_in"]))))
        elif e.etype == "film":
            p = ents[f["directed_by"]]
            intro = _say(rng, "film", s=s, o=p.name, v=f["release_year"])
            facts[p.eid].append((fact_title("directed_by", s),
                                 _say(rng, "directed_by", o=p.name, s=s, c=name(p.facts["born_in"]),
                                      v=p.facts["birth_year"])))
        elif e.etype == "company":
            p, c = ents[f["founded_by"]], ents[f["headquartered_in"]]
            intro = _say(rng, "company", s=s, o=p.name, v=f["founded_year"], c=c.name)
            facts[p.eid].append((fact_title("founded_by", s),
                                 _say(rng, "founded_by", o=p.name, s=s, c=name(p.facts["born_in"]),
                                      v=p.facts["birth_year"])))
            facts[c.eid].append((fact_title("headquartered_in", s),
                                 _say(rng, "headquartered_in", o=c.name, s=s, k=name(c.facts["located_in"]))))
        else:  # pragma: no cover
            raise AssertionError(e.etype)
        docs.append(Document(f"{e.eid}-0", s, intro))
    for e in ents.values():
        # One list passage per director / founder ("Films directed by X: A, B."), the
        # person-side page that a multi-answer search for a bridge person's works lands on.
        for rel in ("directs", "founds"):
            if e.etype == "person" and e.facts[rel]:
                works = ", ".join(name(x) for x in e.facts[rel])
                facts[e.eid].append((LIST_TITLE[rel].format(s=e.name), _say(rng, rel, s=e.name, v=works)))
    for eid, passages in facts.items():
        for k, (title, text) in enumerate(passages, start=1):
            docs.append(Document(f"{eid}-{k}", title, text))
    return docs


# --- questions ---------------------------------------------------------------------


def _S(name: str, *steps: tuple[str, str]) -> Strategy:
    return Strategy(name, tuple(Step(r, q) for r, q in steps))


def _q(kind, family, hops, text, gold, roles, ents, strategies, evidence=()) -> dict:
    return dict(kind=kind, family=family, hops=hops, question=text, golden_answers=tuple(gold),
                roles={r: tuple(v) for r, v in roles.items()},
                names={r: tuple(ents[x].name for x in v) for r, v in roles.items()},
                strategies=tuple(strategies), evidence=tuple(evidence))


def _single_hop(ents, rng) -> list[dict]:
    out = []
    for e in ents.values():
        if e.etype == "person":
            c = e.facts["born_in"]
            out.append(_q("birthplace", "single_hop", 1, f"In which city was {e.name} born?", [ents[c].name],
                          {"subject": [e.eid], "answer": [c]}, ents,
                          [_S("direct", ("subject", "{subject}")),
                           _S("direct_confirm", ("subject", "{subject}"), ("answer", "{answer}")),
                           _S("reverse", ("answer", "hometown of {subject}"))]))
        elif e.etype == "film":
            p = e.facts["directed_by"]
            out.append(_q("director", "single_hop", 1, f"Who directed the film {e.name}?", [ents[p].name],
                          {"subject": [e.eid], "answer": [p]}, ents,
                          [_S("direct", ("subject", "{subject}")),
                           _S("direct_confirm", ("subject", "{subject}"), ("answer", "{answer}")),
                           _S("reverse", ("answer", "director of {subject}"))]))
        elif e.etype == "company":
            p, c = e.facts["founded_by"], e.facts["headquartered_in"]
            out.append(_q("founder", "single_hop", 1, f"Who founded the company {e.name}?", [ents[p].name],
                          {"subject": [e.eid], "answer": [p]}, ents,
                          [_S("direct", ("subject", "{subject}")),
                           _S("direct_confirm", ("subject", "{subject}"), ("answer", "{answer}")),
                           _S("reverse", ("answer", "founder of {subject}"))]))
            out.append(_q("headquarters", "single_hop", 1, f"In which city is {e.name} headquartered?", [ents[c].name],
                          {"subject": [e.eid], "answer": [c]}, ents,
                          [_S("direct", ("subject", "{subject}")),
                           _S("direct_confirm", ("subject", "{subject}"), ("answer", "{answer}")),
                           _S("reverse", ("answer", "headquarters of {subject}"))]))
        elif e.etype == "city":
            k = e.facts["located_in"]
            out.append(_q("city_country", "single_hop", 1, f"In which country is the city of {e.name}?", [ents[k].name],
                          {"subject": [e.eid], "answer": [k]}, ents,
                          [_S("direct", ("subject", "{subject}")),
                           _S("direct_confirm", ("subject", "{subject}"), ("answer", "{answer}")),
                           _S("reverse", ("answer", "country of {subject}"))]))
    return out


def _multi_hop(ents, rng) -> list[dict]:
    out = []
    for e in ents.values():
        if e.etype == "person":
            c = e.facts["born_in"]
            k = ents[c].facts["located_in"]
            out.append(_q("birth_country", "multi_hop", 2, f"In which country was {e.name} born?", [ents[k].name],
                          {"subject": [e.eid], "bridge": [c], "answer": [k]}, ents,
                          [_S("forward", ("subject", "{subject}"), ("bridge", "{bridge}")),
                           _S("combined", ("bridge", "hometown of {subject} country")),
                           _S("forward_confirm", ("subject", "{subject}"), ("bridge", "{bridge}"),
                              ("answer", "country of {bridge}"))]))
        elif e.etype == "film":
            p = e.facts["directed_by"]
            c = ents[p].facts["born_in"]
            k = ents[c].facts["located_in"]
            out.append(_q("director_birth_year", "multi_hop", 2, f"In which year was the director of {e.name} born?",
                          [str(ents[p].facts["birth_year"])], {"subject": [e.eid], "bridge": [p]}, ents,
                          [_S("forward", ("subject", "{subject}"), ("bridge", "{bridge}")),
                           _S("combined", ("bridge", "director of {subject} birth year"))]))
            out.append(_q("director_birth_country", "multi_hop", 3, f"In which country was the director of {e.name} born?",
                          [ents[k].name], {"subject": [e.eid], "bridge1": [p], "bridge2": [c], "answer": [k]}, ents,
                          [_S("forward", ("subject", "{subject}"), ("bridge1", "{bridge1}"), ("bridge2", "{bridge2}")),
                           _S("combined", ("bridge1", "director of {subject} birthplace"),
                              ("bridge2", "{bridge2}")),
                           _S("forward_confirm", ("subject", "{subject}"), ("bridge1", "{bridge1}"), ("bridge2", "{bridge2}"),
                              ("answer", "country of {bridge2}"))]))
        elif e.etype == "company":
            p = e.facts["founded_by"]
            c = ents[p].facts["born_in"]
            hq = e.facts["headquartered_in"]
            k = ents[hq].facts["located_in"]
            out.append(_q("founder_birthplace", "multi_hop", 2, f"In which city was the founder of {e.name} born?",
                          [ents[c].name], {"subject": [e.eid], "bridge": [p], "answer": [c]}, ents,
                          [_S("forward", ("subject", "{subject}"), ("bridge", "{bridge}")),
                           _S("combined", ("bridge", "founder of {subject} birthplace")),
                           _S("forward_confirm", ("subject", "{subject}"), ("bridge", "{bridge}"),
                              ("answer", "hometown of {bridge}"))]))
            out.append(_q("hq_country", "multi_hop", 2, f"In which country is {e.name} headquartered?",
                          [ents[k].name], {"subject": [e.eid], "bridge": [hq], "answer": [k]}, ents,
                          [_S("forward", ("subject", "{subject}"), ("bridge", "{bridge}")),
                           _S("combined", ("bridge", "headquarters of {subject} country")),
                           _S("forward_confirm", ("subject", "{subject}"), ("bridge", "{bridge}"),
                              ("answer", "country of {bridge}"))]))
    return out


def _comparison(ents, rng, n: int) -> list[dict]:
    by = {t: [e for e in ents.values() if e.etype == t] for t in ("person", "film", "city")}
    # type -> (attribute, kind, question, pick, attribute words for the queries); the
    # attribute words make a query land on the intro, which states the attribute.
    spec = {
        "person": ("birth_year", "born_earlier", "Who was born earlier, {a} or {b}?", min, "birth year"),
        "film": ("release_year", "released_earlier", "Which film was released earlier, {a} or {b}?", min, "release year"),
        "city": ("population", "more_people", "Which city has more people, {a} or {b}?", max, "population"),
    }
    out, seen = [], set()
    for _ in range(n * 20):
        if len(out) >= n:
            break
        t = rng.choice(list(spec))
        attr, kind, tmpl, pick, words = spec[t]
        a, b = rng.sample(by[t], 2)
        if a.facts[attr] == b.facts[attr] or frozenset((a.eid, b.eid)) in seen:
            continue
        seen.add(frozenset((a.eid, b.eid)))
        win = pick((a, b), key=lambda x: x.facts[attr])
        strategies = [_S("a_first", ("a", f"{{a}} {words}"), ("b", f"{{b}} {words}")),
                      _S("b_first", ("b", f"{{b}} {words}"), ("a", f"{{a}} {words}"))]
        out.append(_q(kind, "comparison", 2, tmpl.format(a=a.name, b=b.name), [win.name],
                      {"a": [a.eid], "b": [b.eid]}, ents, strategies,
                      evidence=[str(a.facts[attr]), str(b.facts[attr])]))
    return out


def _multi_answer(ents, rng) -> list[dict]:
    out = []
    born: dict[str, list[Entity]] = {}
    for e in ents.values():
        if e.etype == "person":
            born.setdefault(e.facts["born_in"], []).append(e)
    for c, people in born.items():
        city = ents[c].name
        for rel, noun, prof, kind in (("directs", "film", "film director", "film_by_birthplace"),
                                      ("founds", "company", "entrepreneur", "company_by_birthplace")):
            bridges = [p for p in people if p.facts[rel]]
            if not bridges:
                continue
            answers = [x for p in bridges for x in p.facts[rel]]
            verb = "directed" if rel == "directs" else "founded"
            noun_pl = "films" if rel == "directs" else "companies"
            # Step 1 echoes the city's "Hometown of <person>" passages, step 2 the bridge's
            # "<Key> <answer>" passages; each shows the next hop's name.
            out.append(_q(kind, "multi_answer", 2, f"Name a {noun} {verb} by someone born in {city}.",
                          [ents[x].name for x in answers],
                          {"subject": [c], "bridge": [p.eid for p in bridges], "answer": answers}, ents,
                          [_S("forward", ("subject", f"hometown of {_with_article(prof)} from {{subject}}"),
                              ("bridge", f"{noun_pl} {verb} by {{bridge}}")),
                           _S("forward_confirm", ("subject", f"hometown of {_with_article(prof)} from {{subject}}"),
                              ("bridge", f"{noun_pl} {verb} by {{bridge}}"), ("answer", "{answer}"))]))
    return out


def _split(items: list[dict], fractions, rng: random.Random, family: str) -> dict[str, list[Question]]:
    # Dedupe by question text so the splits are disjoint questions.
    uniq: dict[str, dict] = {}
    for it in items:
        uniq.setdefault(it["question"], it)
    items = list(uniq.values())
    rng.shuffle(items)
    n = len(items)
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    bounds = {"train": (0, n_train), "validation": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    out = {}
    for split, (lo, hi) in bounds.items():
        out[split] = [Question(qid=f"{family}-{split}-{i}", split=split, **it) for i, it in enumerate(items[lo:hi])]
    return out


def generate_world(cfg: WorldConfig | None = None) -> World:
    """Generate a world deterministically from ``cfg`` (same config, same world)."""
    cfg = (cfg or WorldConfig()).resolved()
    rng = random.Random(f"searchgym-world-{GENERATOR_VERSION}-{cfg.seed}")
    ents = _entities(cfg, rng)
    docs = _documents(ents, random.Random(rng.random()))
    qrng = random.Random(rng.random())
    n = cfg.questions_per_family
    fam_items = {
        "single_hop": _single_hop(ents, qrng),
        "multi_hop": _multi_hop(ents, qrng),
        "comparison": _comparison(ents, qrng, n),
        "multi_answer": _multi_answer(ents, qrng),
    }
    questions: dict[str, list[Question]] = {s: [] for s in SPLITS}
    for fam, items in fam_items.items():
        qrng.shuffle(items)
        parts = _split(items[:n], cfg.split_fractions, qrng, fam)
        for s in SPLITS:
            questions[s].extend(parts[s])
    return World(cfg, ents, docs, questions)
