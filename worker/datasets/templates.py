"""Chat templates of the tiny presets that render tools, tool calls and tool results, as Gemma's and
Llama's own templates do, and the check that a model's template renders a row's tool calls at all.

Without tools these templates render exactly what the recipes' templates (GEMMA_CHAT_TEMPLATE,
LLAMA_CHAT_TEMPLATE) render. The tool definitions go into the system part of the first user turn; an
assistant's calls are written inside its {% generation %} block (so they are trained), each as
<tool_call>{"name": ..., "arguments": {...}}</tool_call>; tool results are their own `tool` turn outside
any generation block (so they are not trained).
"""

from __future__ import annotations

from typing import Any

_CALLS = (
    "{%- if message['tool_calls'] is defined and message['tool_calls'] -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{{ '<tool_call>' }}"
    "{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}"
    "{{ '</tool_call>' }}"
    "{%- endfor -%}"
    "{%- endif -%}"
)

GEMMA_TOOL_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] | trim -%}{%- set messages = messages[1:] -%}"
    "{%- else -%}{%- set system = '' -%}{%- endif -%}"
    "{%- if tools is defined and tools -%}"
    "{%- set system = (system + '\n\n' if system else '') + 'Tools you can call, one <tool_call> each:\n'"
    " + (tools | tojson) -%}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] | trim }}" + _CALLS + "<end_of_turn>{% endgeneration %}{{ '\n' }}"
    "{%- else -%}"
    "{%- if loop.first and system -%}{{ system + '\n\n' }}{%- endif -%}"
    "{{ message['content'] | trim }}<end_of_turn>{{ '\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)

LLAMA_TOOL_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if tools is defined and tools -%}"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ messages[0]['content'] | trim }}{{ '\n\n' }}{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{ 'Tools you can call, one <tool_call> each:\n' }}{{ tools | tojson }}<|eot_id|>"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{ message['content'] | trim }}" + _CALLS + "<|eot_id|>{% endgeneration %}"
    "{%- else -%}"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"
)


def uses_tools(row: dict[str, Any]) -> bool:
    """Whether a chat row has tool definitions, tool calls or tool results."""
    msgs = row.get("messages") or []
    return bool(row.get("tools")) or any(m.get("tool_calls") or m.get("role") == "tool" for m in msgs)


def tool_rendering_problem(tokenizer: Any, row: dict[str, Any]) -> str | None:
    """Why the tokenizer's chat template cannot be trusted with this row's tools (None when it can): the
    template fails, or a tool name, a called function or a tool result does not appear in what it renders."""
    if not uses_tools(row):
        return None
    messages = row["messages"]
    tools = row.get("tools") or None
    try:
        text = str(tokenizer.apply_chat_template(messages, tools=tools, tokenize=False))
    except Exception as exc:  # jinja2 errors of a template that was never meant for tools
        return f"the model's chat template cannot render tool calls ({type(exc).__name__}: {exc})"
    for message in messages:
        for call in message.get("tool_calls") or []:
            name = call["function"]["name"]
            if name not in text:
                return (
                    f"the model's chat template cannot render tool calls: the call to {name!r} is missing "
                    "from the rendered row"
                )
        if message.get("role") == "tool" and message["content"].strip() not in text:
            return (
                "the model's chat template cannot render tool results: a tool turn is missing from the "
                "rendered row"
            )
    for tool in tools or []:
        name = tool.get("function", {}).get("name", "")
        if name and name not in text:
            return f"the model's chat template does not render the tool definitions ({name!r} is missing)"
    return None
