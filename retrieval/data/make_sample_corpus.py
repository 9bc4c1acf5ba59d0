"""Regenerate ``sample_corpus.jsonl``: a small factual Search-R1 corpus bundled for demos/tests.

Every document is rendered from the tables below (well-known facts), so the corpus is
deterministic and its answers are known. Run: ``python retrieval/data/make_sample_corpus.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from searchgym.retrieval.fileio import atomic_write_text

# country, capital, continent, official language, currency
COUNTRIES = [
    ("France", "Paris", "Europe", "French", "euro"),
    ("Germany", "Berlin", "Europe", "German", "euro"),
    ("Italy", "Rome", "Europe", "Italian", "euro"),
    ("Spain", "Madrid", "Europe", "Spanish", "euro"),
    ("Portugal", "Lisbon", "Europe", "Portuguese", "euro"),
    ("Netherlands", "Amsterdam", "Europe", "Dutch", "euro"),
    ("Belgium", "Brussels", "Europe", "Dutch, French and German", "euro"),
    ("Austria", "Vienna", "Europe", "German", "euro"),
    ("Switzerland", "Bern", "Europe", "German, French, Italian and Romansh", "Swiss franc"),
    ("Poland", "Warsaw", "Europe", "Polish", "zloty"),
    ("Czech Republic", "Prague", "Europe", "Czech", "Czech koruna"),
    ("Hungary", "Budapest", "Europe", "Hungarian", "forint"),
    ("Greece", "Athens", "Europe", "Greek", "euro"),
    ("Sweden", "Stockholm", "Europe", "Swedish", "Swedish krona"),
    ("Norway", "Oslo", "Europe", "Norwegian", "Norwegian krone"),
    ("Denmark", "Copenhagen", "Europe", "Danish", "Danish krone"),
    ("Finland", "Helsinki", "Europe", "Finnish and Swedish", "euro"),
    ("Ireland", "Dublin", "Europe", "Irish and English", "euro"),
    ("United Kingdom", "London", "Europe", "English", "pound sterling"),
    ("Iceland", "Reykjavik", "Europe", "Icelandic", "Icelandic krona"),
    ("Romania", "Bucharest", "Europe", "Romanian", "Romanian leu"),
    ("Ukraine", "Kyiv", "Europe", "Ukrainian", "hryvnia"),
    ("Russia", "Moscow", "Europe and Asia", "Russian", "ruble"),
    ("Turkey", "Ankara", "Europe and Asia", "Turkish", "Turkish lira"),
    ("Japan", "Tokyo", "Asia", "Japanese", "yen"),
    ("China", "Beijing", "Asia", "Mandarin Chinese", "renminbi"),
    ("South Korea", "Seoul", "Asia", "Korean", "South Korean won"),
    ("India", "New Delhi", "Asia", "Hindi and English", "Indian rupee"),
    ("Pakistan", "Islamabad", "Asia", "Urdu and English", "Pakistani rupee"),
    ("Thailand", "Bangkok", "Asia", "Thai", "baht"),
    ("Vietnam", "Hanoi", "Asia", "Vietnamese", "dong"),
    ("Indonesia", "Jakarta", "Asia", "Indonesian", "Indonesian rupiah"),
    ("Philippines", "Manila", "Asia", "Filipino and English", "Philippine peso"),
    ("Malaysia", "Kuala Lumpur", "Asia", "Malay", "ringgit"),
    ("Iran", "Tehran", "Asia", "Persian", "Iranian rial"),
    ("Saudi Arabia", "Riyadh", "Asia", "Arabic", "Saudi riyal"),
    ("Israel", "Jerusalem", "Asia", "Hebrew", "new shekel"),
    ("Egypt", "Cairo", "Africa", "Arabic", "Egyptian pound"),
    ("Nigeria", "Abuja", "Africa", "English", "naira"),
    ("Kenya", "Nairobi", "Africa", "Swahili and English", "Kenyan shilling"),
    ("Ethiopia", "Addis Ababa", "Africa", "Amharic", "birr"),
    ("Morocco", "Rabat", "Africa", "Arabic and Berber", "Moroccan dirham"),
    ("Ghana", "Accra", "Africa", "English", "Ghanaian cedi"),
    ("South Africa", "Pretoria", "Africa", "eleven official languages including Zulu and English", "rand"),
    ("United States", "Washington, D.C.", "North America", "English", "United States dollar"),
    ("Canada", "Ottawa", "North America", "English and French", "Canadian dollar"),
    ("Mexico", "Mexico City", "North America", "Spanish", "Mexican peso"),
    ("Cuba", "Havana", "North America", "Spanish", "Cuban peso"),
    ("Brazil", "Brasilia", "South America", "Portuguese", "Brazilian real"),
    ("Argentina", "Buenos Aires", "South America", "Spanish", "Argentine peso"),
    ("Chile", "Santiago", "South America", "Spanish", "Chilean peso"),
    ("Peru", "Lima", "South America", "Spanish and Quechua", "sol"),
    ("Colombia", "Bogota", "South America", "Spanish", "Colombian peso"),
    ("Australia", "Canberra", "Oceania", "English", "Australian dollar"),
    ("New Zealand", "Wellington", "Oceania", "English and Maori", "New Zealand dollar"),
]

# name, symbol, atomic number, group description, discovered/known
ELEMENTS = [
    ("Hydrogen", "H", 1, "the lightest element and the most abundant in the universe"),
    ("Helium", "He", 2, "a noble gas used to fill balloons"),
    ("Lithium", "Li", 3, "an alkali metal used in rechargeable batteries"),
    ("Carbon", "C", 6, "the basis of organic chemistry, found as graphite and diamond"),
    ("Nitrogen", "N", 7, "the main component of Earth's atmosphere"),
    ("Oxygen", "O", 8, "a gas needed for respiration and combustion"),
    ("Fluorine", "F", 9, "the most electronegative element"),
    ("Neon", "Ne", 10, "a noble gas that glows red-orange in signs"),
    ("Sodium", "Na", 11, "an alkali metal found in table salt"),
    ("Magnesium", "Mg", 12, "a light metal used in alloys"),
    ("Aluminium", "Al", 13, "a light metal used in cans and aircraft"),
    ("Silicon", "Si", 14, "a semiconductor used in computer chips"),
    ("Phosphorus", "P", 15, "an element essential to DNA and fertilisers"),
    ("Sulfur", "S", 16, "a yellow element that smells when burned"),
    ("Chlorine", "Cl", 17, "a halogen used to disinfect water"),
    ("Argon", "Ar", 18, "a noble gas used in light bulbs and welding"),
    ("Potassium", "K", 19, "an alkali metal important for nerve signals"),
    ("Calcium", "Ca", 20, "a metal that makes up bones and teeth"),
    ("Titanium", "Ti", 22, "a strong light metal used in aerospace and implants"),
    ("Iron", "Fe", 26, "the metal at the core of steel and of Earth's core"),
    ("Cobalt", "Co", 27, "a metal used in magnets and blue pigments"),
    ("Nickel", "Ni", 28, "a metal used in stainless steel and coins"),
    ("Copper", "Cu", 29, "a reddish metal used in electrical wiring"),
    ("Zinc", "Zn", 30, "a metal used to galvanise steel"),
    ("Silver", "Ag", 47, "a precious metal with the highest electrical conductivity"),
    ("Tin", "Sn", 50, "a metal alloyed with copper to make bronze"),
    ("Iodine", "I", 53, "a halogen needed by the thyroid gland"),
    ("Platinum", "Pt", 78, "a precious metal used in catalytic converters"),
    ("Gold", "Au", 79, "a precious metal that does not tarnish"),
    ("Mercury", "Hg", 80, "the only metal that is liquid at room temperature"),
    ("Lead", "Pb", 82, "a heavy toxic metal once used in pipes and paint"),
    ("Uranium", "U", 92, "a radioactive metal used as nuclear fuel"),
    ("Plutonium", "Pu", 94, "a radioactive element made in nuclear reactors"),
]

# planet, order from the Sun, description
PLANETS = [
    ("Mercury (planet)", 1, "the smallest planet and the closest to the Sun, with no moons"),
    ("Venus", 2, "the hottest planet, covered by thick clouds of sulfuric acid"),
    ("Earth", 3, "the only planet known to support life, with one moon"),
    ("Mars", 4, "the red planet, with two small moons named Phobos and Deimos"),
    ("Jupiter", 5, "the largest planet, a gas giant with the Great Red Spot"),
    ("Saturn", 6, "a gas giant famous for its bright ring system"),
    ("Uranus", 7, "an ice giant that rotates on its side"),
    ("Neptune", 8, "the farthest planet from the Sun, an ice giant with strong winds"),
]

# person, field, nationality, known for
PEOPLE = [
    ("Albert Einstein", "physicist", "German-born", "the theory of relativity and the equation E = mc^2"),
    ("Isaac Newton", "physicist and mathematician", "English", "the laws of motion and universal gravitation"),
    ("Marie Curie", "physicist and chemist", "Polish-French", "research on radioactivity and the discovery of polonium and radium"),
    ("Charles Darwin", "naturalist", "English", "the theory of evolution by natural selection"),
    ("Galileo Galilei", "astronomer", "Italian", "telescopic observations of the moons of Jupiter"),
    ("Nikola Tesla", "inventor and engineer", "Serbian-American", "alternating current electrical systems"),
    ("Ada Lovelace", "mathematician", "English", "writing the first published algorithm for Babbage's Analytical Engine"),
    ("Alan Turing", "mathematician and computer scientist", "English", "the Turing machine and breaking the Enigma code"),
    ("Dmitri Mendeleev", "chemist", "Russian", "creating the periodic table of the elements"),
    ("Louis Pasteur", "microbiologist", "French", "pasteurisation and early vaccines against rabies"),
    ("Gregor Mendel", "scientist and friar", "Austrian", "the laws of inheritance discovered with pea plants"),
    ("Nicolaus Copernicus", "astronomer", "Polish", "the heliocentric model with the Sun at the centre"),
    ("Johannes Kepler", "astronomer", "German", "the laws of planetary motion"),
    ("Michael Faraday", "scientist", "English", "electromagnetic induction and electrolysis"),
    ("James Clerk Maxwell", "physicist", "Scottish", "the equations of electromagnetism"),
    ("Rosalind Franklin", "chemist", "English", "X-ray images that revealed the structure of DNA"),
    ("Leonardo da Vinci", "painter and inventor", "Italian", "painting the Mona Lisa and The Last Supper"),
    ("William Shakespeare", "playwright and poet", "English", "writing Hamlet, Macbeth and Romeo and Juliet"),
    ("Wolfgang Amadeus Mozart", "composer", "Austrian", "composing The Magic Flute and over 600 other works"),
    ("Ludwig van Beethoven", "composer", "German", "composing nine symphonies while losing his hearing"),
    ("Johann Sebastian Bach", "composer", "German", "the Brandenburg Concertos and the Mass in B minor"),
    ("Pablo Picasso", "painter", "Spanish", "co-founding Cubism and painting Guernica"),
    ("Vincent van Gogh", "painter", "Dutch", "painting The Starry Night and Sunflowers"),
    ("Frida Kahlo", "painter", "Mexican", "self-portraits inspired by Mexican folk culture"),
    ("Miguel de Cervantes", "novelist", "Spanish", "writing Don Quixote"),
    ("Leo Tolstoy", "novelist", "Russian", "writing War and Peace and Anna Karenina"),
    ("Jane Austen", "novelist", "English", "writing Pride and Prejudice and Emma"),
    ("Homer", "poet", "ancient Greek", "the epic poems the Iliad and the Odyssey"),
    ("Confucius", "philosopher", "Chinese", "teachings on ethics collected in the Analects"),
    ("Aristotle", "philosopher", "ancient Greek", "works on logic, biology and ethics, and tutoring Alexander the Great"),
]

# river, continent, flows into, length in km
RIVERS = [
    ("Nile", "Africa", "the Mediterranean Sea", 6650),
    ("Amazon River", "South America", "the Atlantic Ocean", 6400),
    ("Yangtze", "Asia", "the East China Sea", 6300),
    ("Mississippi River", "North America", "the Gulf of Mexico", 3730),
    ("Danube", "Europe", "the Black Sea", 2850),
    ("Rhine", "Europe", "the North Sea", 1230),
    ("Ganges", "Asia", "the Bay of Bengal", 2525),
    ("Volga", "Europe", "the Caspian Sea", 3530),
    ("Thames", "Europe", "the North Sea", 346),
    ("Seine", "Europe", "the English Channel", 777),
    ("Congo River", "Africa", "the Atlantic Ocean", 4700),
    ("Mekong", "Asia", "the South China Sea", 4900),
]

# mountain, range, country, height in m
MOUNTAINS = [
    ("Mount Everest", "Himalayas", "Nepal and China", 8849),
    ("K2", "Karakoram", "Pakistan and China", 8611),
    ("Mont Blanc", "Alps", "France and Italy", 4806),
    ("Matterhorn", "Alps", "Switzerland and Italy", 4478),
    ("Mount Kilimanjaro", "Eastern Rift mountains", "Tanzania", 5895),
    ("Aconcagua", "Andes", "Argentina", 6961),
    ("Denali", "Alaska Range", "United States", 6190),
    ("Mount Fuji", "Fuji volcanic zone", "Japan", 3776),
    ("Mount Elbrus", "Caucasus", "Russia", 5642),
    ("Mount Kosciuszko", "Snowy Mountains", "Australia", 2228),
]


def documents() -> list[tuple[str, str]]:
    """(title, body) pairs, in a fixed order."""
    docs: list[tuple[str, str]] = []
    for country, capital, continent, language, currency in COUNTRIES:
        docs.append((country, f"{country} is a country in {continent}. Its capital is {capital}. "
                     f"The official language is {language}, and the currency is the {currency}."))
        docs.append((capital, f"{capital} is the capital city of {country}, in {continent}. "
                     f"People in {capital} mostly speak {language.split(' including ')[-1]}."))
    for name, symbol, number, desc in ELEMENTS:
        docs.append((name, f"{name} is a chemical element with the symbol {symbol} and atomic number "
                     f"{number}. It is {desc}."))
    for name, order, desc in PLANETS:
        ordinal = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"][order - 1]
        short = name.split(" (")[0]
        docs.append((name, f"{short} is the {ordinal} planet from the Sun in the Solar System. It is {desc}."))
    for name, field, nationality, known in PEOPLE:
        docs.append((name, f"{name} was a {nationality} {field}, best known for {known}."))
    for name, continent, mouth, length in RIVERS:
        docs.append((name, f"The {name} is a river in {continent} about {length} kilometres long. "
                     f"It flows into {mouth}."))
    for name, rng, country, height in MOUNTAINS:
        docs.append((name, f"{name} is a mountain in the {rng}, located in {country}. "
                     f"Its summit is {height} metres above sea level."))
    return docs


def main() -> None:
    out = Path(__file__).with_name("sample_corpus.jsonl")
    lines = [
        json.dumps({"id": str(i), "contents": f'"{title}"\n{body}'}, ensure_ascii=False)
        for i, (title, body) in enumerate(documents())
    ]
    atomic_write_text(out, "\n".join(lines) + "\n")  # read back by the retriever: never torn
    print(f"wrote {len(lines)} documents to {out}")


if __name__ == "__main__":
    main()
