"""Evidence: what runs leave behind, turned into traces, journals and profiles."""
