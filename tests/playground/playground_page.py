"""The playground page as the tests drive it: by its labels and roles where a person would,
reading the figures it shows from its data attributes."""

from __future__ import annotations

from playwright.sync_api import Locator, Page, expect


class Playground:
    def __init__(self, page: Page):
        self.page = page
        self.prompt = page.get_by_label("Message")
        self.send_button = page.get_by_role("button", name="Send")
        self.stop_button = page.get_by_role("button", name="Stop")
        self.turns = page.locator("#transcript .turn")

    def ready(self) -> Playground:
        expect(self.send_button).to_be_enabled()
        return self

    def set(self, label: str, value: str) -> None:
        """Fills a field under Settings (opened first, as a person would)."""
        if not self.page.locator("#settings").evaluate("node => node.open"):
            self.page.locator("#settings summary").click()
        self.page.get_by_label(label).fill(value)

    def type_and_send(self, text: str) -> Locator:
        """Types a message, sends it with Enter; the new turn."""
        index = self.turns.count()
        self.prompt.fill(text)
        self.prompt.press("Enter")
        return self.turns.nth(index)

    def ask(self, text: str) -> Locator:
        """A whole turn: sent, answered, its figures shown."""
        turn = self.type_and_send(text)
        self.wait_finished(turn)
        return turn

    @staticmethod
    def wait_finished(turn: Locator) -> None:
        expect(turn.locator(".stats[data-finish]")).to_have_count(1)

    @staticmethod
    def reply(turn: Locator) -> str:
        return turn.locator(".assistant .text").inner_text().strip()

    @staticmethod
    def figures(turn: Locator) -> dict[str, str]:
        """What the turn cost, as shown beside it: fed, cached, completion, finish."""
        return turn.locator(".stats").evaluate("node => ({...node.dataset})")

    def session_id(self) -> str:
        return self.page.locator("#session-id").inner_text().strip()
