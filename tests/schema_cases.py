"""The structured-output case list: JSON schemas exactly as apps send them, and the official
JSON-Schema-Test-Suite's draft 2020-12 schemas (tests/fixtures/json-schema-test-suite, MIT).

- app_cases(): pydantic v2 models' model_json_schema() (typical app models: nested models, enum
  classes, Literal, Field(ge/le/gt/multiple_of), conset, EmailStr, datetime, recursion) and the
  OpenAI SDK's strict schemas of some of them (what `client.chat.completions.parse()` sends).
- suite_cases(): every schema of the generation-relevant keyword files and the format files.

benchmarks/bench_schemas.py runs them all; tests/chat/test_structured_output.py runs a fast subset.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import BaseModel, EmailStr, Field, conint, conlist, conset, constr

SUITE = Path(__file__).parent / "fixtures" / "json-schema-test-suite"


class Colour(str, enum.Enum):
    red = "red"
    green = "green"
    blue = "blue"


class Priority(int, enum.Enum):
    low = 1
    high = 2


class Step(BaseModel):
    explanation: str
    output: str


class MathReasoning(BaseModel):  # the OpenAI structured-outputs guide's example
    steps: list[Step]
    final_answer: str


class Address(BaseModel):
    street: str
    city: str
    postcode: constr(max_length=10)
    country: Literal["IT", "FR", "DE", "US"] = "IT"


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=120)
    email: EmailStr
    born: dt.date
    address: Address
    colour: Colour


class Event(BaseModel):
    title: str
    starts: dt.datetime
    ends: Optional[dt.datetime] = None
    attendees: list[EmailStr] = Field(default_factory=list, max_length=5)


class Rating(BaseModel):
    stars: float = Field(gt=0, le=5)
    votes: conint(ge=1)
    step: int = Field(multiple_of=5, ge=0, le=100)


class Tags(BaseModel):
    tags: conset(str, min_length=1, max_length=4)


class Node(BaseModel):  # recursion
    value: int
    children: list["Node"] = Field(default_factory=list, max_length=3)


class Invoice(BaseModel):
    number: constr(pattern=r"^INV-[0-9]{4}$")
    lines: conlist(int, min_length=1, max_length=4)
    total: float = Field(ge=0)
    paid: bool


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int = Field(ge=1, le=9)


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Pet(BaseModel):
    pet: Union[Cat, Dog] = Field(discriminator="kind")


class Ticket(BaseModel):
    id: int
    priority: Priority
    labels: list[Literal["bug", "feature", "docs"]] = Field(max_length=3)
    assignee: Optional[str] = None


class Weather(BaseModel):
    city: str = Field(max_length=30)
    unit: Literal["celsius", "fahrenheit"]
    days: int = Field(ge=1, le=7)


class Sentiment(BaseModel):
    label: Literal["positive", "negative", "neutral"]
    score: float = Field(ge=0, le=1)


class Entity(BaseModel):
    text: str = Field(max_length=20)
    type: Literal["PERSON", "ORG", "PLACE"]


class Extraction(BaseModel):
    entities: list[Entity] = Field(max_length=4)
    language: constr(pattern=r"^[a-z]{2}$")


class Meeting(BaseModel):
    day: dt.date
    at: dt.time
    room: Optional[int] = Field(default=None, ge=1, le=50)


class Config(BaseModel):
    name: str = Field(min_length=1, max_length=16)
    retries: int = Field(default=3, ge=0, le=10)
    timeout: float = Field(default=1.5, gt=0, lt=60)
    flags: dict[str, bool] = Field(default_factory=dict, max_length=3)


class Point(BaseModel):
    x: float
    y: float


class Polygon(BaseModel):
    points: list[Point] = Field(min_length=3, max_length=5)
    closed: bool


class UserId(BaseModel):
    id: str = Field(pattern=r"^[0-9a-f]{8}$")


class Order(BaseModel):
    customer: Person
    items: list[Invoice] = Field(max_length=2)
    status: Literal["new", "paid", "shipped"]


class Choice(BaseModel):
    answer: Union[int, str, None]


class Bounded(BaseModel):
    small: int = Field(gt=-5, lt=5)
    fraction: float = Field(ge=0, le=1)
    code: int = Field(ge=100, le=999, multiple_of=100)


class Survey(BaseModel):
    answers: dict[str, Literal["yes", "no"]] = Field(max_length=3)
    comment: Optional[str] = Field(default=None, max_length=50)


class Contact(BaseModel):
    emails: conset(EmailStr, min_length=1, max_length=2)
    phone: constr(pattern=r"^\+[0-9]{6,12}$")


class Book(BaseModel):
    title: str = Field(max_length=40)
    year: int = Field(ge=1450, le=2030)
    isbn: constr(pattern=r"^[0-9]{13}$")
    genres: list[Literal["fiction", "science", "history"]] = Field(min_length=1, max_length=2)


class Library(BaseModel):
    books: list[Book] = Field(max_length=2)
    open_at: dt.time


class Tree(BaseModel):  # mutual recursion through a list
    name: str = Field(max_length=10)
    leaves: list["Tree"] = Field(default_factory=list, max_length=2)


class Flags(BaseModel):
    a: bool
    b: bool
    c: Literal[True]


class Measurement(BaseModel):
    value: float
    unit: Literal["m", "kg", "s"]
    taken: dt.datetime
    sensor: constr(min_length=2, max_length=8)


class Calendar(BaseModel):
    events: list[Event] = Field(max_length=2)
    owner: EmailStr


class Profile(BaseModel):  # the example: nested models, enums, bounds, EmailStr, datetime, Literal
    person: Person
    joined: dt.datetime
    role: Literal["admin", "member"]
    level: int = Field(ge=1, le=10)


MODELS = [MathReasoning, Address, Person, Event, Rating, Tags, Node, Invoice, Pet, Ticket, Weather, Sentiment,
          Extraction, Meeting, Config, Polygon, UserId, Order, Choice, Bounded, Survey, Contact, Book, Library,
          Tree, Flags, Measurement, Calendar, Profile, Step, Point, Cat]
# The OpenAI SDK's strict mode needs every field required and no open dicts or defaults outside
# it: these models convert.
STRICT = [MathReasoning, Weather, Sentiment, Extraction, Address, Invoice, Ticket, Book, Profile, Polygon]


def app_cases() -> list[tuple[str, dict]]:
    """(name, schema): pydantic's model_json_schema() of every model, and the OpenAI SDK's strict
    schema of the STRICT ones (skipped when the openai package is missing)."""
    cases = [(f"pydantic:{m.__name__}", m.model_json_schema()) for m in MODELS]
    try:
        from openai.lib._pydantic import to_strict_json_schema
    except ImportError:
        return cases
    return cases + [(f"openai-strict:{m.__name__}", to_strict_json_schema(m)) for m in STRICT]


# The suite's schemas no value can meet (each checked by hand; the suite lists no valid instance
# for any of them): the coverage goal counts the others.
UNSATISFIABLE = {
    "suite:allOf#4": "allOf holds false",
    "suite:allOf#5": "allOf holds false",
    "suite:anyOf#4": "anyOf of false, false",
    "suite:boolean_schema#1": "false",
    "suite:enum#14": "an empty enum",
    "suite:not#4": "not {}",
    "suite:not#5": "not true",
    "suite:oneOf#2": "oneOf of three true: every value meets three",
    "suite:oneOf#4": "oneOf of true, true, false: every value meets two",
    "suite:oneOf#5": "oneOf of three false",
    "suite:ref#10": "$ref to false",
}


def satisfiable(name: str) -> bool:
    """Whether some value meets the case `name` (its "file#index" key, description or not)."""
    return name.split(" ", 1)[0] not in UNSATISFIABLE


def suite_cases() -> list[tuple[str, dict | bool]]:
    """(file#index description, schema) for every schema in the copied suite files."""
    cases = []
    for path in sorted(SUITE.rglob("*.json")):
        name = str(path.relative_to(SUITE).with_suffix(""))
        for i, group in enumerate(json.loads(path.read_text(encoding="utf-8"))):
            cases.append((f"suite:{name}#{i} {group['description']}", group["schema"]))
    return cases
