"""Find coordinates for region names that come without them.

GPU clouds name places inside their region codes (``se-stockholm-1``, ``kansascity-usa-1``,
``UTAH_USA``, ``Denmark, DK, EU``, RunPod's bare country codes). ``PlaceIndex`` reads the words
of such a name and looks them up, in this order:

1. ``REGION_HINTS``: region codes whose place the code does not spell out (Nebius, Paperspace).
2. A city named in the text (``city_match``): ``DATA_CENTRE_TOWNS`` first, then the Natural Earth
   populated places, limited to the country the text names when it names one. Among places of
   the same name the most populous wins.
3. A state or province named in the text, within a named country (``country_approximation``):
   the coordinates are those of the most populous place in that state.
4. A country alone (``country_approximation``): the most populous place in that country.

Anything coarser than a city is recorded as ``country_approximation`` and stored with an empty
city, so an approximate location never passes for an exact one. A name with no country and no
city is not located at all and the caller reports it.
"""

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from fleet.models import LocationSource

# Towns with data centres that Natural Earth's 10m places omit or confuse with a larger namesake
# (its only "Carlsbad" is in New Mexico). Coordinates are the towns' public centre points.
DATA_CENTRE_TOWNS: dict[str, tuple[str, str, float, float]] = {
    "ashburn": ("Ashburn", "US", 39.0438, -77.4874),
    "beltsville": ("Beltsville", "US", 39.0348, -76.9075),
    "carlsbad": ("Carlsbad", "US", 33.1581, -117.3506),
    "culpeper": ("Culpeper", "US", 38.4732, -77.9966),
    "dulles": ("Dulles", "US", 38.9586, -77.4480),
    "mantsala": ("Mäntsälä", "FI", 60.6333, 25.3167),
    "secaucus": ("Secaucus", "US", 40.7895, -74.0565),
}

# Region codes that do not spell out their place: (provider, code) -> the place, in words.
# Sources: Nebius's region list (eu-north1 Finland, eu-west1 Paris, us-central1
# Kansas City) and Paperspace's NY2 data centre in Secaucus, New Jersey.
REGION_HINTS: dict[tuple[str, str], str] = {
    ("nebius", "eu-north1"): "Mantsala Finland",
    ("nebius", "eu-west1"): "Paris France",
    ("nebius", "us-central1"): "Kansas City USA",
    ("paperspace", "East Coast (NY2)"): "Secaucus USA",
}

# Country spellings found in region codes beyond Natural Earth's country names.
COUNTRY_ALIASES = {
    "usa": "US",
    "us": "US",
    "unitedstates": "US",
    "uk": "GB",
    "fin": "FI",
    "czechia": "CZ",
    "thenetherlands": "NL",
    "hongkong": "HK",
    "korea": "KR",
    "uae": "AE",
}

# Two-letter prefixes of region codes that name a continent, not a country (eu-, ap-, me-, sa-
# for South America, af-, na-, as-, oc-).
CONTINENT_PREFIXES = {"eu", "ap", "me", "sa", "af", "na", "as", "oc"}

# Words in region names that also match small Natural Earth places.
STOPWORDS = {"east", "west", "north", "south", "central", "coast", "default", "region", "zone", "eu"}

_VAST_LOCATION = re.compile(r"^(?P<place>.*),\s*(?P<country>[A-Z]{2}),\s*[A-Z]{2}$")


@dataclass(frozen=True)
class Location:
    latitude: float
    longitude: float
    country_code: str
    country: str
    city: str
    source: str


@dataclass(frozen=True)
class _Place:
    name: str
    country_code: str
    state_key: str
    latitude: float
    longitude: float
    population: int


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _words(text: str) -> list[str]:
    return [word for word in re.split(r"[^a-z0-9]+", text.lower()) if word]


def _ngrams(words: list[str], longest: int = 3) -> list[str]:
    """Return joined runs of 1 to ``longest`` words, longest first."""
    grams = []
    for size in range(longest, 0, -1):
        for start in range(len(words) - size + 1):
            grams.append("".join(words[start : start + size]))
    return grams


class PlaceIndex:
    """Cities, states and countries by normalized name, built from Natural Earth populated places."""

    def __init__(self, places: list[_Place], country_labels: dict[str, str]):
        self.by_name: dict[str, list[_Place]] = {}
        self.by_state: dict[tuple[str, str], _Place] = {}
        self.by_country: dict[str, _Place] = {}
        for place in places:
            self.by_name.setdefault(_key(place.name), []).append(place)
            state_key = (place.country_code, place.state_key)
            if state_key not in self.by_state or self.by_state[state_key].population < place.population:
                self.by_state[state_key] = place
            if (
                place.country_code not in self.by_country
                or self.by_country[place.country_code].population < place.population
            ):
                self.by_country[place.country_code] = place
        self.country_labels = country_labels
        # A country's name maps to the code of its most populous place, so "France" is FR, not an
        # overseas department that Natural Earth also files under France.
        self.country_codes = dict(COUNTRY_ALIASES)
        for code in sorted(self.by_country, key=lambda code: self.by_country[code].population):
            self.country_codes[_key(country_labels.get(code, ""))] = code
        self.country_codes.update(COUNTRY_ALIASES)

    @classmethod
    def from_csv(cls, path: Path | None) -> "PlaceIndex":
        """Read a Natural Earth ``populated_places_simple`` CSV; ``None`` gives an index of built-in towns only."""
        places: list[_Place] = []
        country_labels: dict[str, str] = {}
        if path is None:
            return cls(places, country_labels)
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                code = row["iso_a2"]
                if len(code) != 2:
                    continue
                # The geometry columns hold the corrected point; the plain ones are off for a few places.
                latitude = float(row.get("geom_latitude") or row["latitude"])
                longitude = float(row.get("geom_longitude") or row["longitude"])
                population = int(float(row["pop_max"] or 0))
                places.append(_Place(row["nameascii"], code, _key(row["adm1name"]), latitude, longitude, population))
                country_labels.setdefault(code, row["adm0name"])
        return cls(places, country_labels)

    def locate(self, provider: str, text: str) -> Location | None:
        """Return where a region named ``text`` by ``provider`` is, or None when the text names no place."""
        text = REGION_HINTS.get((provider, text), text)
        place_text, country = self._split_country(text)
        grams = [gram for gram in _ngrams([w for w in _words(place_text) if not w.isdigit()]) if gram not in STOPWORDS]
        if country is None:
            country = self._find_country(grams)

        city = self._find_city(grams, country)
        if city is not None:
            return Location(
                city.latitude,
                city.longitude,
                city.country_code,
                self.country_labels.get(city.country_code, ""),
                city.name,
                LocationSource.CITY_MATCH,
            )
        if country is None:
            return None
        # NOTE: a country-wide code such as Lambda's "us-west-2" lands on the country's most populous
        # place (New York), thousands of kilometres off. A region table entry for it removes the error.
        anchor = self._find_state(grams, country) or self.by_country.get(country)
        if anchor is None:
            return None
        return Location(
            anchor.latitude,
            anchor.longitude,
            country,
            self.country_labels.get(country, ""),
            "",
            LocationSource.COUNTRY_APPROXIMATION,
        )

    def _split_country(self, text: str) -> tuple[str, str | None]:
        """Split an explicit country code off ``text``.

        Recognized: Vast's ``place, CC, continent``, a bare ``CC`` and a country prefix such as ``se-``.
        """
        match = _VAST_LOCATION.match(text)
        if match:
            return match["place"], match["country"]
        if re.fullmatch(r"[A-Z]{2}", text.strip()):
            return "", text.strip()
        first = _words(text)[:1]
        if first and len(first[0]) == 2 and first[0] not in CONTINENT_PREFIXES and first[0].upper() in self.by_country:
            return text, first[0].upper()
        return text, None

    def _find_country(self, grams: list[str]) -> str | None:
        for gram in grams:
            if gram in self.country_codes:
                return self.country_codes[gram]
        return None

    def _find_city(self, grams: list[str], country: str | None) -> _Place | None:
        for gram in grams:
            town = DATA_CENTRE_TOWNS.get(gram)
            if town is not None and country in (None, town[1]):
                return _Place(town[0], town[1], "", town[2], town[3], 0)
            candidates = [place for place in self.by_name.get(gram, []) if country in (None, place.country_code)]
            if not candidates:
                continue
            city = max(candidates, key=lambda place: place.population)
            # "Montana, US" names the state, not the hamlet in Alaska. "New York" names both a state
            # and its largest city, so it stays a city match.
            state_anchor = self.by_state.get((city.country_code, gram))
            if state_anchor is not None and state_anchor is not city:
                continue
            return city
        return None

    def _find_state(self, grams: list[str], country: str) -> _Place | None:
        for gram in grams:
            place = self.by_state.get((country, gram))
            if place is not None:
                return place
        return None
