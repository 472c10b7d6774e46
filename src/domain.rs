//! What the planner needs to know about a libvirt domain, parsed from its XML.
