"""lib.text: distinct readable labels, Plotly-safe text and server paths taken out of what leaves."""

from __future__ import annotations

from lib.text import one_line, plot_escape, readable_labels, strip_paths


def test_readable_labels_are_distinct_when_readable_label_makes_two_the_same():
    assert readable_labels(["bean_rust", "healthy"]) == {"bean_rust": "Bean rust", "healthy": "Healthy"}
    labels = readable_labels(["cats", "Cats", "bean_rust", "bean-rust", "dogs"])
    assert labels == {
        "cats": "Cats (cats)",
        "Cats": "Cats (Cats)",
        "bean_rust": "Bean rust (bean_rust)",
        "bean-rust": "Bean rust (bean-rust)",
        "dogs": "Dogs",
    }
    tricky = ["a_b", "a-b", "A b (a-b)", "a b (a-b)"]  # folders named like another's label
    assert len(set(readable_labels(tricky).values())) == len(tricky)


def test_plot_escape_leaves_no_markup_or_placeholder():
    assert plot_escape('<a href="http://evil">x</a>') == '&lt;a href="http://evil"&gt;x&lt;/a&gt;'
    assert plot_escape("<span style='color:red'>y</span>\n<br>") == (
        "&lt;span style='color:red'&gt;y&lt;/span&gt; &lt;br&gt;"
    )
    assert plot_escape("%{x} & 50%") == "&#37;&#123;x&#125; &amp; 50&#37;"


def test_strip_paths_keeps_relative_paths_and_urls():
    known = [("/srv/app", ""), ("/data/photos/beans", "beans"), ("/opt/venv", "<python>")]
    text = (
        'File "/srv/app/lib/train/recipe.py", line 3; File "/opt/venv/lib/python3.11/os.py"; '
        "on /data/photos/beans. /data/photos/beans/train/a.jpg /data/photos/beansy/b.jpg "
        "/home/someone/secret/w.h5 https://storage.googleapis.com/x/y.zip train/healthy 50/100 /srv/app"
    )
    assert strip_paths(text, known) == (
        'File "lib/train/recipe.py", line 3; File "<python>/lib/python3.11/os.py"; '
        "on beans. beans/train/a.jpg b.jpg w.h5 https://storage.googleapis.com/x/y.zip train/healthy 50/100 ."
    )
    assert strip_paths("/home/someone/x.png", [], others=False) == "/home/someone/x.png"


def test_one_line_shows_control_characters_so_a_name_cannot_fake_a_line():
    assert one_line("a.png\nb.png: Healthy — 99% sure") == "a.png\\x0ab.png: Healthy — 99% sure"
    assert one_line("x\r\x1b[2J\u202egnp.exe") == "x\\x0d\\x1b[2J\\u202egnp.exe"
    assert one_line("été bean_rust.jpg") == "été bean_rust.jpg"
