"""What the platforms' webhook bodies look like, for the OpenAPI document only.

The parsers in ``app/platforms`` read these bodies field by field and stay the authority; these
models describe the fields they read (everything else is accepted and ignored). The http and
console platforms' body is ``app.platforms.http.BotEvent``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# Intercom and Zendesk send some ids as JSON numbers; the parsers accept both.
IdValue = str | int


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class IntercomAuthor(_Doc):
    """The author of a conversation's source or part. Only a customer's email identifies a
    session: ``type`` user, lead or contact (an admin's, bot's or team's never does)."""

    type: str | None = None
    id: IdValue | None = None
    email: str | None = None


class IntercomSource(_Doc):
    author: IntercomAuthor | None = None


class IntercomConversationPart(_Doc):
    part_type: str | None = None
    author: IntercomAuthor | None = None


class IntercomConversationParts(_Doc):
    conversation_parts: list[IntercomConversationPart] = []


class IntercomContact(_Doc):
    """A contact of the conversation; the first one's ``external_id`` is the user id."""

    id: IdValue | None = None
    external_id: IdValue | None = None
    email: str | None = None


class IntercomContactList(_Doc):
    """API 2.1 and later wrap the contacts in a ``contact.list``; 2.0 sends the list itself."""

    type: str | None = None
    contacts: list[IntercomContact] = []


class IntercomLegacyUser(_Doc):
    """The ``user`` of API 1.x conversations."""

    user_id: IdValue | None = None
    email: str | None = None


class IntercomConversation(_Doc):
    """``data.item`` of a conversation topic."""

    id: IdValue = Field(description="The conversation id the session is linked to.")
    custom_attributes: dict[str, Any] = Field(
        default={},
        description="The session id is read from the attribute the product's "
        "``session_attribute`` names.",
    )
    source: IntercomSource | None = None
    conversation_parts: IntercomConversationParts | None = None
    contacts: IntercomContactList | list[IntercomContact] | None = None
    user: IntercomLegacyUser | None = None


class IntercomNotificationData(_Doc):
    item: IntercomConversation | dict[str, Any] | None = Field(
        default=None, description="The conversation (for a ``ping``, the ping's message)."
    )


class IntercomNotification(_Doc):
    """An Intercom ``notification_event`` (signed with ``X-Hub-Signature``)."""

    type: str | None = Field(default=None, examples=["notification_event"])
    id: str | None = Field(
        default=None, description="The notification id: a redelivery with the same id is a no-op."
    )
    topic: str = Field(
        description="``conversation.user.created`` links as a new conversation, "
        "``conversation.user.replied`` as a reply; ``ping`` and every other topic are "
        "acknowledged and ignored.",
        examples=["conversation.user.created"],
    )
    data: IntercomNotificationData | None = None


class ZendeskCommentAuthor(_Doc):
    id: IdValue | None = None
    is_staff: bool = False


class ZendeskComment(_Doc):
    author: ZendeskCommentAuthor | None = None


class ZendeskEventData(_Doc):
    comment: ZendeskComment | None = None


class ZendeskTicketDetail(_Doc):
    id: IdValue = Field(description="The ticket id the session is linked to.")
    requester_id: IdValue | None = Field(
        default=None,
        description="Looked up with the Zendesk API for the requester's external id and email.",
    )


class ZendeskTicketEvent(_Doc):
    """A Zendesk event-subscription webhook for a ticket (signed with
    ``X-Zendesk-Webhook-Signature``)."""

    type: str = Field(
        pattern=r"^zen:event-type:",
        description="``zen:event-type:ticket.created`` links as a new conversation; "
        "``zen:event-type:ticket.comment_added`` as a reply when the requester (not staff) "
        "wrote the comment; other types are acknowledged and ignored.",
        examples=["zen:event-type:ticket.created"],
    )
    id: str | None = Field(
        default=None, description="The event id: a redelivery with the same id is a no-op."
    )
    detail: ZendeskTicketDetail
    event: ZendeskEventData | None = None


class ZendeskTrigger(_Doc):
    """The body of a Zendesk trigger or automation webhook, as its admin writes it. A value
    Zendesk rendered empty or left unrendered (still holding ``{{``) counts as absent."""

    event: str = Field(
        description="``ticket.created`` links as a new conversation; ``ticket.comment_added`` "
        "and ``ticket.updated`` as a reply; other values are acknowledged and ignored.",
        examples=["ticket.created"],
    )
    ticket_id: IdValue = Field(examples=["{{ticket.id}}"])
    requester_external_id: str | None = Field(
        default=None, examples=["{{ticket.requester.external_id}}"]
    )
    requester_email: str | None = Field(default=None, examples=["{{ticket.requester.email}}"])
    session_id: str | None = Field(default=None, examples=["{{ticket.ticket_field_360001}}"])
