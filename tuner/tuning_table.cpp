#include "tuner/tuning_table.hpp"

#include <algorithm>
#include <bit>
#include <map>

namespace kiln::tuner {

int gpu_match(const Provenance& p, const GpuIdentity& gpu) {
  if (!gpu.known()) return 0;
  const bool name = !gpu.name.empty() && p.gpu == gpu.name;
  const bool sms = gpu.sm_count > 0 && p.sm_count == gpu.sm_count;
  return name && sms ? 3 : name ? 2 : sms ? 1 : 0;
}

std::vector<TableEntry> table_entries(const TuningDb& db, const std::string& source, size_t order) {
  std::vector<TableEntry> out;
  out.reserve(db.entries.size());
  for (const TuningEntry& e : db.entries) {
    TableEntry t;
    if (!to_specialization(e, t.spec)) continue;  // cannot happen for a loaded db (validated against this build)
    t.bucket = e.key.tokens;
    t.median_us = e.median_us;
    t.provenance = e.provenance;
    t.source = source;
    t.order = order;
    out.push_back(std::move(t));
  }
  return out;
}

TuningTable::TuningTable(const std::vector<TableEntry>& entries, GpuIdentity gpu) : gpu_(std::move(gpu)) {
  // Group by specialization; keep only the best GPU tier of each.
  struct Group {
    int tier = -1;
    std::map<int, const TableEntry*> by_bucket;  // bucket log2 → best entry of the tier
  };
  std::unordered_map<detail::Key128, Group, detail::Key128Hash> groups;
  for (const TableEntry& e : entries) {
    if (e.bucket == 0 || !std::has_single_bit(e.bucket)) continue;
    Group& g = groups[shape_key(e.spec)];
    const int tier = gpu_match(e.provenance, gpu_);
    if (tier < g.tier) continue;
    if (tier > g.tier) {
      g.tier = tier;
      g.by_bucket.clear();
    }
    const int b = std::countr_zero(e.bucket);
    auto [it, inserted] = g.by_bucket.emplace(b, &e);
    if (!inserted) {
      const TableEntry& cur = *it->second;
      if (e.median_us < cur.median_us || (e.median_us == cur.median_us && e.order < cur.order)) it->second = &e;
    }
  }
  for (auto& [key, g] : groups) {
    Slot s;
    std::vector<int> tuned;
    for (const auto& [b, e] : g.by_bucket) {
      s.exact |= uint64_t{1} << b;
      tuned.push_back(b);
      s.configs.push_back(e->spec.config);
      s.chosen.push_back(*e);
    }
    for (int b = 0; b < 64; ++b) {
      size_t best = 0;
      for (size_t i = 1; i < tuned.size(); ++i) {
        const int d = std::abs(tuned[i] - b), dbest = std::abs(tuned[best] - b);
        if (d < dbest || (d == dbest && tuned[i] > tuned[best])) best = i;
      }
      s.pick[static_cast<size_t>(b)] = static_cast<uint8_t>(best);
    }
    slots_.emplace(key, std::move(s));
  }
}

const TableEntry* TuningTable::explain(const detail::Key128& shape, int bucket_log2) const {
  auto it = slots_.find(shape);
  if (it == slots_.end()) return nullptr;
  return &it->second.chosen[it->second.pick[static_cast<size_t>(bucket_log2)]];
}

}  // namespace kiln::tuner
