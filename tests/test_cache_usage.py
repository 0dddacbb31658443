"""The user tags of the radix tree (`cache.usage`): which keys a node is ranked by."""
from __future__ import annotations

from context_forge.cache.radix import RadixTree
from context_forge.workflow.scope import scope_key

PS = 4


class Tree:
    """A bare radix tree (no pools) with a page-id counter for inserts."""

    def __init__(self) -> None:
        self.tree = RadixTree(PS)
        self.next_page = 0

    def request(self, tokens: list[int], workflow: str, agent: str) -> None:
        key = scope_key(workflow, agent)
        self.tree.match(tokens, agent_id=key)
        pages = list(range(self.next_page, self.next_page + len(tokens) // PS))
        self.next_page += len(pages)
        self.tree.insert(tokens, pages, agent_id=key)

    def tagged(self, key: str) -> int:
        """Tokens of the nodes carrying ``key``."""
        return sum(len(n.key) for n in self.tree.agent_nodes(key))

    def check_superset(self) -> None:
        for node in self.tree.nodes():
            for child in node.children.values():
                if node is not self.tree.root:
                    assert child.agents <= node.agents


def seg(tag: int, n: int) -> list[int]:
    return [tag * 1000 + i for i in range(n)]


def test_scoped_key_follows_the_latest_path_only() -> None:
    t = Tree()
    system = seg(1, 16)
    t.request(system + seg(2, 8), "w", "coder")
    t.request(system + seg(3, 8), "w", "coder")
    key = scope_key("w", "coder")
    assert t.tagged(key) == 24
    old_tail = [n for n in t.tree.nodes() if n.key[:1] == [2000]]
    assert old_tail and key not in old_tail[0].agents
    t.check_superset()


def test_prefix_shared_by_two_instances_gets_the_bare_agent_key() -> None:
    t = Tree()
    system = seg(1, 16)
    t.request(system + seg(2, 8), "w1", "coder")
    t.request(system + seg(3, 8), "w2", "coder")
    assert t.tagged("coder") == 16
    t.check_superset()


def test_finished_workflow_loses_its_scoped_keys_but_a_shared_prefix_stays() -> None:
    t = Tree()
    system = seg(1, 16)
    t.request(system + seg(2, 8), "w1", "coder")
    t.request(system + seg(3, 8), "w2", "coder")
    t.tree.forget_workflow("w1")
    assert t.tagged(scope_key("w1", "coder")) == 0
    assert t.tagged("coder") == 16
    t.check_superset()


def test_first_workflow_of_an_agent_leaves_its_path_under_the_bare_key() -> None:
    """An agent no other workflow shared a prefix with yet may be called again by a later one
    (the next round of a simulation): its path is kept under the bare key, ranked by recurrence."""
    t = Tree()
    t.request(seg(1, 16) + seg(2, 8), "round-0", "npc")
    t.tree.forget_workflow("round-0")
    assert t.tagged(scope_key("round-0", "npc")) == 0
    assert t.tagged("npc") == 24


def test_an_agent_seen_once_keeps_only_the_prefix_others_shared_when_they_tell_it() -> None:
    """Where agents seen in two workflows shared a 16-token system prompt with their previous one
    (``first_share``), an agent seen in one finished workflow keeps that much of its path under
    its bare key; the rest (that instance's own task) is untagged and goes first."""
    t = Tree()
    for agent, tag in (("planner", 1), ("coder", 2)):
        t.request(seg(tag, 16) + seg(10 + tag, 8), "w1", agent)
        t.request(seg(tag, 16) + seg(20 + tag, 8), "w2", agent)
    t.request(seg(3, 16) + seg(30, 12), "w2", "reviewer")
    assert t.tree.usage.first_share("reviewer") == 16
    t.tree.forget_workflow("w1")
    t.tree.forget_workflow("w2")
    assert t.tagged(scope_key("w2", "reviewer")) == 0
    assert t.tagged("reviewer") == 16
    tail = [n for n in t.tree.nodes() if n.key[:1] == [30000]]
    assert tail and not tail[0].agents
    t.check_superset()


def test_carried_memory_keeps_the_whole_latest_path_under_the_bare_key() -> None:
    """Each round's prompt extends the previous round's: the carry is told from the tokens, even
    when the old path is no longer cached."""
    t = Tree()
    persona = seg(1, 16)
    memory = seg(2, 64)
    t.request(persona + memory[:8] + seg(10, 4), "round-0", "npc")
    for r in range(1, 4):
        t.request(persona + memory[:8 * (r + 1)] + seg(10 + r, 4), f"round-{r}", "npc")
        t.tree.forget_workflow(f"round-{r - 1}")
    assert t.tree.usage.carries("npc")
    assert t.tagged("npc") == 16 + 32 + 4
    t.check_superset()


def test_template_agent_does_not_carry_its_instance_history() -> None:
    t = Tree()
    system = seg(1, 16)
    for i in range(4):
        t.request(system + seg(100 + i, 12), f"w{i}", "coder")
    assert not t.tree.usage.carries("coder")
    assert t.tagged("coder") == 16


def test_unscoped_tags_are_added_and_never_moved() -> None:
    t = Tree()
    t.tree.insert(seg(1, 8), [0, 1], agent_id="plain")
    t.tree.insert(seg(2, 8), [2, 3], agent_id="plain")
    assert t.tagged("plain") == 16


def _compacting_agent(t: Tree, system: list[int]) -> str:
    """An agent whose history grows by 8 tokens a request and is compacted once it reaches 24:
    two cycles, the second one up to 24 tokens of history again."""
    history = []
    for turn in range(3):
        history += seg(10 + turn, 8)
        t.request(system + history, "w", "coder")
    history = seg(20, 8)  # compacted: only the system prompt is kept
    for turn in range(3):
        t.request(system + history, "w", "coder")
        history += seg(21 + turn, 8)
    return scope_key("w", "coder")


def test_a_reset_is_expected_once_the_path_reaches_the_length_an_earlier_reset_came_at() -> None:
    t = Tree()
    system = seg(1, 16)
    key = _compacting_agent(t, system)
    assert t.tagged(key) == 40
    assert t.tree.usage.expected_keep(key) == 16  # the system prompt, as at the first reset


def test_no_reset_is_expected_below_that_length_or_without_any_reset() -> None:
    t = Tree()
    system = seg(1, 16)
    history: list[int] = []
    for turn in range(4):
        history += seg(10 + turn, 8)
        t.request(system + history, "w", "coder")
    key = scope_key("w", "coder")
    assert t.tree.usage.expected_keep(key) is None  # it never reset
    t2 = Tree()
    _compacting_agent(t2, system)
    t2.request(system + seg(30, 8), "w", "coder")  # the expected reset came
    t2.request(system + seg(30, 8) + seg(31, 8), "w", "coder")
    assert t2.tagged(key) == 32
    assert t2.tree.usage.expected_keep(key) is None  # 32 < 40, where resets came
    t2.check_superset()


def test_an_agent_without_resets_of_its_own_borrows_its_workflows() -> None:
    """A team compacts together: once the coder of workflow w reset, w's tester (whose path is
    as long, and which never reset) is expected to reset too; a tester of another workflow is not."""
    t = Tree()
    for wf in ("w", "v"):
        history: list[int] = []
        for turn in range(3):
            history += seg(40 + turn, 8)
            t.request(seg(2, 16) + history, wf, "tester")
    _compacting_agent(t, seg(1, 16))
    assert t.tagged(scope_key("w", "tester")) == 40
    assert t.tree.usage.expected_keep(scope_key("w", "tester")) == 16
    assert t.tree.usage.expected_keep(scope_key("v", "tester")) is None
    t.tree.usage.forget_workflow("w")
    t.request(seg(2, 16) + seg(50, 24), "w", "tester")
    assert t.tree.usage.expected_keep(scope_key("w", "tester")) is None, "a finished workflow's evidence goes"
    t.check_superset()
