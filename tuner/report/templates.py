"""The report's two Jinja2 templates and its style sheet. Both templates walk the same list of sections
(tuner.report.render.Section); each section is a title and blocks: ("table", Table), ("figure", Figure) or
("note", text). Kept as Python strings so they ship with the package wherever it is installed."""

CSS = """
*, *::before, *::after { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; line-height: 1.45;
       color: #222; margin: 0 auto; max-width: 1180px; padding: 1.5em 1em 3em; }
h1 { font-size: 1.6em; margin: 0 0 .6em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2.2em; }
h3 { font-size: 1.05em; margin: 1.2em 0 .4em; }
dl.context { display: grid; grid-template-columns: max-content minmax(0, 1fr); gap: .15em 1em; font-size: .92em; }
dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
nav ul { display: flex; flex-wrap: wrap; gap: .3em 1.2em; padding: 0; margin: 1em 0 0; list-style: none;
         font-size: .9em; }
nav a { color: #1565c0; text-decoration: none; } nav a:hover { text-decoration: underline; }
.table-scroll { max-width: 100%; overflow-x: auto; margin: .6em 0; }
table { border-collapse: collapse; font-size: .86em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .25em .55em; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; white-space: normal; vertical-align: bottom; min-width: 4.8em; }
td:first-child, th:first-child { text-align: left; } tbody tr:nth-child(even) { background: #fafbfc; }
figure { margin: 1em 0; max-width: 100%; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption, .note { color: #555; font-size: .88em; margin-top: .3em; } .missing { color: #8a6d3b; font-style: italic; }
"""

HTML = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sweep report: {{ name }}</title>
<style>{{ css }}</style>
</head>
<body>
<header>
<h1>Sweep report: {{ name }}</h1>
<dl class="context">
{%- for label, text in context %}
<dt>{{ label }}</dt><dd>{{ text }}</dd>
{%- endfor %}
</dl>
<nav><ul>
{%- for s in sections %}<li><a href="#{{ s.key }}">{{ s.title }}</a></li>{% endfor -%}
</ul></nav>
</header>
<main>
{%- for s in sections %}
<section id="{{ s.key }}">
<h2>{{ s.title }}</h2>
{%- for kind, block in s.blocks %}
{%- if kind == "table" %}
{%- if block.title != s.title %}
<h3>{{ block.title }}</h3>
{%- endif %}
<div class="table-scroll"><table>
<thead><tr>{% for c in block.columns %}<th scope="col">{{ c | breakable }}</th>{% endfor %}</tr></thead>
<tbody>
{%- for row in block.rows %}
<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{%- endfor %}
</tbody>
</table></div>
{%- if block.note %}
<p class="note">{{ block.note }}</p>
{%- endif %}
{%- elif kind == "figure" %}
{%- set size = block.file | png_size %}
<figure><img src="{{ block.file | data_uri }}" alt="{{ block.title }}" width="{{ size[0] }}" height="{{ size[1] }}">
<figcaption>{{ block.caption }}</figcaption></figure>
{%- else %}
<p class="missing">{{ block }}</p>
{%- endif %}
{%- endfor %}
</section>
{%- endfor %}
</main>
</body>
</html>
"""

MARKDOWN = """# Sweep report: {{ name }}

{% for label, text in context -%}
- **{{ label }}**: {{ text | cell }}
{% endfor %}
{% for s in sections %}
## {{ s.title }}

{% for kind, block in s.blocks -%}
{% if kind == "table" -%}
{% if block.title != s.title %}### {{ block.title }}

{% endif -%}
| {% for c in block.columns %}{{ c | cell }} | {% endfor %}
|{% for c in block.columns %}---|{% endfor %}
{% for row in block.rows -%}
| {% for v in row %}{{ v | cell }} | {% endfor %}
{% endfor %}
{% if block.note %}
_{{ block.note }}_
{% endif %}
{% elif kind == "figure" -%}
![{{ block.title }}]({{ block.file.name }})

_{{ block.caption }}_

{% else -%}
{{ block }}

{% endif -%}
{% endfor -%}
{% endfor %}
"""
