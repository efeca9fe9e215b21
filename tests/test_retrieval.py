"""The retrieval pipeline's stages on small conversations, with the real MiniLM embedder and
the SQLite vault: each stage does what it is for, and switching it off changes that."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from memosys.operation.query import analyze_query, find_persons, parse_time
from memosys.operation.retrieval import STAGES, RetrievalConfig
from memosys.system import MemOS

MARCH = datetime(2023, 3, 10, 14, 0, tzinfo=UTC)
JULY = datetime(2023, 7, 2, 18, 30, tzinfo=UTC)


@pytest.fixture
def mos(mos: MemOS) -> MemOS:
    """The runtime with the full pipeline (the default unless MEMOSYS_RETRIEVAL says)."""
    mos.retriever.config = RetrievalConfig()
    return mos


def _session(mos: MemOS, cube: str, session: str, turns: list[tuple[str, str]],
             at: datetime = MARCH) -> list:
    mos.ensure_cube(cube)
    return mos.add(cube, messages=[
        {"role": "user", "name": speaker, "content": text, "id": f"{session}:{n}",
         "timestamp": at}
        for n, (speaker, text) in enumerate(turns, start=1)
    ], session=session)


def _rank(hits: list, item_id: str) -> int:
    ids = [h.item.id for h in hits]
    return ids.index(item_id) + 1 if item_id in ids else 10_000


# --- query analysis (pure) ----------------------------------------------------------------
def test_query_analysis_finds_people_times_and_when_questions() -> None:
    qa = analyze_query("What did Mel and her kids paint in July 2023?", ["Melanie", "Caroline"])
    assert qa.persons == ("Melanie",)
    [window] = qa.time_ranges
    assert (window.start, window.end) == (datetime(2023, 7, 1, tzinfo=UTC),
                                          datetime(2023, 8, 1, tzinfo=UTC))
    assert not qa.asks_time
    assert analyze_query("When did Caroline move to Sweden?", ["Caroline"]).asks_time
    assert analyze_query("How long ago was her birthday?").asks_time
    # question words are never taken for a name prefix ("How" is not "Howard")
    assert find_persons("How did she feel about it?", ["Howard"]) == ()
    assert find_persons("What is Caroline's identity?", ["Caroline", "Melanie"]) == (
        "Caroline",)


@pytest.mark.parametrize(("text", "start", "end"), [
    ("on 8 May, 2023", datetime(2023, 5, 8, tzinfo=UTC), datetime(2023, 5, 9, tzinfo=UTC)),
    ("on May 23, 2023", datetime(2023, 5, 23, tzinfo=UTC), datetime(2023, 5, 24, tzinfo=UTC)),
    ("in December 2023", datetime(2023, 12, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)),
    ("in summer 2021", datetime(2021, 6, 1, tzinfo=UTC), datetime(2021, 9, 1, tzinfo=UTC)),
    ("back in 2022", datetime(2022, 1, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC)),
])
def test_absolute_time_expressions_become_ranges(text: str, start: datetime,
                                                 end: datetime) -> None:
    ranges, months = parse_time(f"What did Alice do {text}?")
    assert [(r.start, r.end) for r in ranges] == [(start, end)] and months == ()


def test_month_without_year_and_the_verb_may() -> None:
    assert parse_time("When did Melanie go camping in June?") == ((), (6,))
    assert parse_time("What may Alice want to do next?") == ((), ())


# --- stages on small conversations ---------------------------------------------------------
def test_context_lifts_the_answer_after_a_matching_question(mos: MemOS) -> None:
    items = _session(mos, "c", "s1", [
        ("Joanna", "Your turtles look adorable! How long have you had them?"),
        ("Nate", "Ha, ages! They are honestly the best roommates ever."),
        ("Joanna", "I went hiking near the lake yesterday with my brother."),
        ("Nate", "The long drive to the tournament was worth it."),
        ("Nate", "I slept for a long time after the party."),
        ("Nate", "I won a regional video game tournament last weekend, so proud!"),
        ("Joanna", "My screenplay got rejected again but I will keep writing."),
        ("Nate", "I have been making coconut milk ice cream, it is so creamy."),
        ("Joanna", "That sounds delicious, you have to share the recipe with me."),
        ("Nate", "Sure, I will send it to you tonight after dinner."),
    ])
    answer = items[1].id  # says nothing about turtles: the turn before it does
    query = "How long has Nate had his turtles?"
    # fusion alone, then fusion + context: the only difference is the context stage
    mos.retriever.config = RetrievalConfig().without("query_analysis", "rerank")
    with_context = mos.search(query, "c", top_k=8, record_access=False)
    assert _rank(with_context, answer) <= 2
    assert with_context[_rank(with_context, answer) - 1].scores["context"] > 0
    mos.retriever.config = RetrievalConfig().without("context", "query_analysis", "rerank")
    without = mos.search(query, "c", top_k=8, record_access=False)
    assert _rank(without, answer) > 2


def test_speaker_named_in_the_question_is_boosted(mos: MemOS) -> None:
    items = _session(mos, "c", "s1", [
        ("Alice", "I painted a sunset over the lake last weekend, my best painting yet."),
        ("Bob", "Nice. I painted too, a small portrait of my dog."),
        ("Alice", "We should visit the art museum together soon."),
    ])
    hits = mos.search("What did Bob paint?", "c", top_k=3, record_access=False)
    assert hits[0].item.id == items[1].id
    assert hits[0].scores["speaker"] == RetrievalConfig().speaker_weight


@pytest.mark.parametrize(("month", "expected"), [("March", 0), ("July", 1)])
def test_time_in_the_question_prefers_memories_from_then(mos: MemOS, month: str,
                                                         expected: int) -> None:
    march = _session(mos, "c", "s1", [("Alice", "I baked a lemon cake for my neighbours.")],
                     at=MARCH)
    july = _session(mos, "c", "s2", [("Alice", "I baked a chocolate cake for the party.")],
                    at=JULY)
    hits = mos.search(f"What cake did Alice bake in {month} 2023?", "c", top_k=2,
                      record_access=False)
    assert hits[0].item.id == [march[0].id, july[0].id][expected]
    assert "time" in hits[0].scores


def test_when_questions_prefer_turns_that_say_when(mos: MemOS) -> None:
    items = _session(mos, "c", "s1", [
        ("Alice", "The pottery class was so relaxing, I loved the clay."),
        ("Alice", "I joined the pottery class last Friday."),
    ])
    hits = mos.search("When did Alice join the pottery class?", "c", top_k=2,
                      record_access=False)
    assert hits[0].item.id == items[1].id
    mos.retriever.config = replace(RetrievalConfig(), time_answer_weight=0.0)
    plain = mos.search("When did Alice join the pottery class?", "c", top_k=2,
                       record_access=False)
    assert plain[0].score - plain[1].score < hits[0].score - hits[1].score


def test_tiny_cube_with_an_untimed_reply(mos: MemOS) -> None:
    """A few memories only, one reply without a timestamp: a name found in every memory is
    no BM25 evidence, and the reply stays between the turns it was said between."""
    mos.create_cube("alice")
    chat = mos.add("alice", messages=[
        {"role": "user", "name": "Alice", "content": "I adopted a beagle called Rex.",
         "id": "D1:1", "timestamp": MARCH},
        {"role": "assistant", "content": "Lovely! How old is he?", "id": "D1:2"},
        {"role": "user", "name": "Alice", "content": "Two years. I also love climbing.",
         "id": "D1:3", "timestamp": MARCH},
    ], session="s1")
    mos.add("alice", "Alice's favourite drink is green tea", memory_type="preference")
    hits = mos.search("which dog breed does Alice have?", "alice", top_k=2)
    assert hits[0].item.id == chat[0].id
    ctx = mos.retriever.conversations.get(mos.get_cube("alice").id)
    assert ctx.neighbours(chat[1].id) == (chat[0].id, chat[2].id)
    assert mos.search("beverage", "alice", top_k=1)[0].item.memory_type.value == "preference"


def test_neighbours_joining_through_context_respect_filters(mos: MemOS) -> None:
    items = _session(mos, "c", "s1", [
        ("Alice", "Guess what, I adopted a puppy!"),
        ("Bob", "Wow, what breed is it?"),
        ("Alice", "A golden retriever named Max."),
        ("Bob", "Cute, send pictures."),
    ])
    mos.add("c", "Alice loves golden retrievers", session="s1")  # a fact in the session
    mos.delete(items[2].id)
    for filters in (None, {"memory_types": ["episode"]}, {"session": "s1"}):
        hits = mos.search("What breed is Alice's puppy?", "c", top_k=10, filters=filters,
                          record_access=False)
        assert items[2].id not in {h.item.id for h in hits}  # deleted: never returned
        if filters and "memory_types" in filters:
            assert {h.item.memory_type.value for h in hits} == {"episode"}
        assert len(hits) == len({h.item.id for h in hits})


def test_conversation_index_follows_writes(mos: MemOS) -> None:
    first = _session(mos, "c", "s1", [("Alice", "Hi Bob!"), ("Bob", "Hi Alice, how are you?")])
    cube_id = mos.get_cube("c").id
    mos.search("hello", "c", record_access=False)  # builds the index
    index = mos.retriever.conversations
    more = _session(mos, "c", "s1", [("Alice", "Great, I just came back from a long trip.")])
    ctx = index.get(cube_id)
    assert ctx.neighbours(first[1].id) == (first[0].id, more[0].id)
    assert ctx.neighbours(more[0].id) == (first[1].id, None)
    assert ctx.speakers["Alice"] == 2
    mos.update(more[0].id, text="Alice: Great, I just came back from a long trip to Japan "
                                "where we climbed mountains and ate ramen.")
    assert index.get(cube_id).turns[more[0].id].length > ctx.turns[first[0].id].length
    assert index.get(cube_id).neighbours(more[0].id) == (first[1].id, None)


def test_all_stages_off_is_plain_reciprocal_rank_fusion(mos: MemOS) -> None:
    _session(mos, "c", "s1", [("Alice", "I adopted a beagle called Rex."),
                              ("Bob", "Dogs are great company.")])
    mos.retriever.config = RetrievalConfig.baseline()
    for hit in mos.search("Alice beagle", "c", record_access=False):
        assert hit.score == pytest.approx(sum(1 / (60 + r) for r in hit.ranks.values()))
        assert set(hit.scores) <= {"bm25", "vector"}


def test_config_switches_stages_by_name() -> None:
    cfg = RetrievalConfig()
    assert not cfg.without("context").context and cfg.without("context").rerank
    assert not any(getattr(RetrievalConfig.baseline(), s) for s in STAGES)
    with pytest.raises(ValueError, match="unknown stage"):
        cfg.without("magic")


def test_the_pipeline_works_on_every_backend(vault, home, embedder) -> None:
    """Only the Vault interface is used, so the stages behave the same on each backend."""
    from memosys.config import Settings

    hybrid = MemOS(Settings.load(home, retrieval="hybrid"), vault=vault, embedder=embedder)
    assert hybrid.retriever.config == RetrievalConfig.baseline()  # plain RRF on request
    with MemOS(Settings.load(home), vault=vault, embedder=embedder) as runtime:
        assert runtime.retriever.config == RetrievalConfig()  # the pipeline by default
        items = _session(runtime, "c", "s1", [
            ("Alice", "I painted a sunset over the lake last weekend, my best painting yet."),
            ("Bob", "Nice. I painted too, a small portrait of my dog."),
            ("Alice", "We should visit the art museum together soon."),
        ])
        hits = runtime.search("What did Bob paint?", "c", top_k=3, record_access=False)
        assert hits[0].item.id == items[1].id and "speaker" in hits[0].scores
        more = _session(runtime, "c", "s1", [("Bob", "Sure, next Saturday works for me.")])
        ctx = runtime.retriever.conversations.get(runtime.get_cube("c").id)
        assert ctx.neighbours(more[0].id) == (items[2].id, None)


# --- cubes that are not chat logs ------------------------------------------------------------
FACTS = [
    "Alice is allergic to peanuts.",
    "Alice spent three weeks travelling through Portugal and Spain last summer, visiting "
    "Lisbon, Porto, Seville and Madrid with her sister and two old friends from college.",
    "Alice works as a senior data engineer at a logistics company in Rotterdam, where she "
    "maintains the pipelines that schedule trucks, ships and warehouse staff every night.",
    "Alice plays the cello in a community orchestra that rehearses on Tuesday evenings and "
    "gives four concerts a year in churches around the city.",
    "Bob, Alice's brother, is a nurse.",
    "Alice's apartment has a small balcony where she grows tomatoes, basil, mint, chillies "
    "and strawberries in wooden boxes she built herself from old pallets.",
]


@pytest.mark.parametrize("with_session", [False, True])
def test_fact_cube_direct_match_comes_first(mos: MemOS, with_session: bool) -> None:
    """Short facts next to long ones (extracted facts may carry the session they came
    from): the length prior and session context must not bury the one that answers."""
    mos.create_cube("facts")
    items = [mos.add("facts", text, session="s1" if with_session else None)[0]
             for text in FACTS]
    for query, expected in [("What is Alice allergic to?", 0),
                            ("What does Alice's brother do for a living?", 4),
                            ("Which instrument does Alice play?", 3)]:
        hits = mos.search(query, "facts", top_k=3, record_access=False)
        assert hits[0].item.id == items[expected].id, (query, [h.item.text for h in hits])


DOCUMENT = """# Office handbook

## Opening hours
The office is open from 8am to 6pm on weekdays. On public holidays the building is closed
and the alarm is armed; the facilities team publishes the list of holidays every January
together with the dates of the summer maintenance week.

## Wi-Fi
The guest Wi-Fi password is "orange-kite-42".

## Kitchen
Everyone cleans up after themselves. The dishwasher runs every evening at seven, and the
fridge is emptied on Friday afternoons: label your food with your name and the date, or it
will be thrown away. Coffee beans are ordered by the office manager on the first Monday of
each month; tell her if we are running low before then.

## Parking
There are twelve parking spaces behind the building, shared by all teams on a first come,
first served basis. Bicycles go in the covered rack next to the entrance, and electric
scooters may be charged in the basement storage room but never in the offices.
"""


def test_document_cube_direct_match_comes_first(mos: MemOS) -> None:
    """Chunks of one document: a short section that answers beats long ones nearby."""
    mos.create_cube("docs")
    chunks = mos.reader.add_document("docs", DOCUMENT, uri="file:///handbook.md",
                                     max_chunk_chars=400)
    assert len(chunks) >= 4
    wifi = next(c for c in chunks if "orange-kite" in c.text)
    for query in ("What is the guest wifi password?", "wifi password"):
        hits = mos.search(query, "docs", top_k=3, record_access=False)
        assert hits[0].item.id == wifi.id, (query, [h.item.text[:40] for h in hits])
    parking = next(c for c in chunks if "scooters" in c.text)
    hits = mos.search("Where can I charge my scooter?", "docs", top_k=3, record_access=False)
    assert hits[0].item.id == parking.id


def test_derived_memories_are_keys_for_their_sources(mos: MemOS) -> None:
    """A fact extracted from a turn says what the turn means in other words: a search that
    matches the fact lifts the turn it came from (through `derived_from`)."""
    from memosys.types import MemoryItem, MemoryType

    items = _session(mos, "c", "s1", [
        ("Nate", "Ha, ages! Three years now, they are the best roommates ever."),
        ("Joanna", "I went hiking near the lake yesterday with my brother."),
        ("Nate", "The tournament was long but worth it, I won the second round."),
        ("Joanna", "My screenplay got rejected again but I will keep writing."),
    ])
    [fact] = mos.add_items("c", [MemoryItem(
        cube_id=mos.get_cube("c").id, memory_type=MemoryType.FACT,
        text="Nate has had his pet turtles for three years.", derived_from=[items[0].id])])
    query = "How long has Nate had his turtles?"
    mos.retriever.config = replace(RetrievalConfig(), derived_keys=True)
    hits = mos.search(query, "c", top_k=3, record_access=False)
    ranked = [h.item.id for h in hits]
    assert set(ranked[:2]) == {fact.id, items[0].id}
    assert hits[ranked.index(items[0].id)].scores["key"] > 0
    mos.retriever.config = replace(RetrievalConfig(), derived_keys=False)
    plain = mos.search(query, "c", top_k=3, record_access=False)
    assert _rank(plain, items[0].id) > _rank(hits, items[0].id)
    assert all("key" not in h.scores for h in plain)


def test_an_extra_stage_plugs_in_before_context(mos: MemOS) -> None:
    """The hook a candidate-expansion stage (graph neighbours, say) uses: it adds
    candidates, which later stages score and the filter still applies to."""
    from memosys.operation.retrieval import SearchRun

    items = _session(mos, "c", "s1", [("Alice", "I adopted a beagle called Rex."),
                                      ("Bob", "Dogs are great company.")])
    other = _session(mos, "c", "s2", [("Alice", "Rex loves the beach in summer.")])

    class Linked:
        name = "linked"

        def enabled(self, config: RetrievalConfig) -> bool:
            return True

        def __call__(self, run: SearchRun) -> None:
            if items[0].id in run.pool:  # a link from the beagle turn to the beach turn
                run.add_candidate(other[0].id, run.pool[items[0].id].base, pooled=False)

    mos.retriever.insert_stage(Linked())
    assert [s.name for s in mos.retriever.stages].index("linked") == \
        [s.name for s in mos.retriever.stages].index("context") - 1
    with pytest.raises(ValueError, match="already"):
        mos.retriever.insert_stage(Linked())
    hits = mos.search("Which breed is Alice's dog?", "c", top_k=3, record_access=False,
                      filters={"session": "s1"})
    assert other[0].id not in {h.item.id for h in hits}  # the filter still holds
    hits = mos.search("Which breed is Alice's dog?", "c", top_k=3, record_access=False)
    assert other[0].id in {h.item.id for h in hits}


def test_synthesised_memories_do_not_reorder_what_they_summarise(mos: MemOS) -> None:
    """Topic summaries restate many turns and outscore them on BM25. In their own lane they
    are still found, but they neither take the turns' candidate slots nor move the scale
    fusion normalises by: the turns keep their order (in the shared lists the top two swap
    and a turn falls out)."""
    from memosys.operation.consolidate_plan import SYNTH_KEY
    from memosys.types import MemoryItem, MemoryType

    filler = ["We baked bread with the kids this weekend.",
              "The new job at the bank starts in June.",
              "My sister adopted a grey cat called Pebble.",
              "The pottery class was messy but fun.",
              "We drove to the coast and watched the sunset.",
              "I finished reading a novel about Mars.",
              "Our garden has tomatoes and basil now.",
              "The concert downtown was loud and great."]
    for s in range(4):
        _session(mos, "c", f"f{s}", [("Mel" if n % 2 else "Ann", t)
                                     for n, t in enumerate(filler)])
    items = _session(mos, "c", "s1", [
        ("Ann", "What got you into running?"),
        ("Mel", "Running started as a way to de-stress after work."),
        ("Mel", "Now I run five miles along the river every morning."),
        ("Ann", "Running sounds great for your head."),
        ("Mel", "It keeps me calm and I sleep better."),
    ])
    mos.retriever.config = replace(RetrievalConfig(), depth=3)
    query = "Why did Mel get into running?"

    def order() -> list[str]:
        return [h.item.id for h in mos.search(query, "c", top_k=12, record_access=False)
                if not h.item.metadata.get(SYNTH_KEY)]

    before = order()
    text = "Running, running: Mel got into running; running every morning, to de-stress. "
    summaries = mos.add_items("c", [MemoryItem(
        cube_id=mos.get_cube("c").id, memory_type=MemoryType.FACT, text=text * (n + 1),
        derived_from=[i.id for i in items],
        metadata={SYNTH_KEY: {"kind": "topic", "key": f"t{n}"}}) for n in range(4)])
    hits = mos.search(query, "c", top_k=12, record_access=False)
    assert {s.id for s in summaries} <= {h.item.id for h in hits}, "summaries are found"
    after = order()
    assert after == before[:len(after)]


def test_a_synthesis_below_a_memory_it_quotes_gives_up_its_slot(mos: MemOS) -> None:
    """Redundancy: a summary ranked under one of the statements it quotes repeats what the
    results hold; it leaves the list (the next memory takes the slot). A summary that is
    the best match stays."""
    from memosys.operation.consolidate_plan import SYNTH_KEY
    from memosys.types import MemoryItem, MemoryType

    mos.ensure_cube("c")
    cube_id = mos.get_cube("c").id
    facts = mos.add_items("c", [MemoryItem(cube_id=cube_id, memory_type=MemoryType.FACT,
                                           text=t) for t in (
        "Nate loves his two pet turtles.",
        "Nate won a video game tournament in Chicago.",
        "Nate dyed his hair purple.",
        "Joanna wrote a screenplay about a lighthouse.",
    )])
    [summary] = mos.add_items("c", [MemoryItem(
        cube_id=cube_id, memory_type=MemoryType.FACT,
        text="Profile of Nate. Facts: Nate loves his two pet turtles. Nate won a video game "
             "tournament in Chicago. Nate dyed his hair purple.",
        derived_from=[f.id for f in facts[:3]],
        metadata={SYNTH_KEY: {"kind": "profile", "key": "nate"}})])

    def ranked(query: str, top_k: int) -> list[str]:
        return [h.item.id for h in mos.search(query, "c", top_k=top_k, record_access=False)]

    pets = ranked("Does Nate love his pet turtles?", 2)
    assert pets[0] == facts[0].id and summary.id not in pets and len(pets) == 2
    everything = ranked("Profile of Nate: facts about Nate", 5)
    assert everything[0] == summary.id
