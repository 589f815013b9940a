// chat.cpp: a multi-turn chat with r1 from C++17, the handles held by RAII wrappers.
//
//   c++ -std=c++17 examples/cpp/chat.cpp -Iinclude -Ltarget/release -lr1 -o chat
//   LD_LIBRARY_PATH=target/release ./chat [--greedy] [--max-tokens N] MODEL "message" ["message" ...]
#include "r1.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace r1 {

// An r1 failure as an exception: the status and r1's message.
struct Error : std::runtime_error {
    r1_status status;
    Error(const std::string &what, r1_status s)
        : std::runtime_error(what + ": " + r1_status_name(s) + ": " + r1_last_error_message()), status(s) {}
};

inline void check(r1_status s, const char *what) {
    if (s != R1_OK) throw Error(what, s);
}

struct ModelDeleter { void operator()(r1_model *m) const { r1_model_free(m); } };
struct SessionDeleter { void operator()(r1_session *s) const { r1_session_free(s); } };
struct TraceDeleter { void operator()(r1_trace *t) const { r1_trace_free(t); } };

class Model {
  public:
    explicit Model(const std::string &path) {
        r1_model *m = nullptr;
        check(r1_model_load(path.c_str(), nullptr, &m), "loading");
        ptr_.reset(m);
    }
    const r1_model *get() const { return ptr_.get(); }

  private:
    std::unique_ptr<r1_model, ModelDeleter> ptr_;
};

struct Message {
    std::string role, content;
};

class Session {
  public:
    explicit Session(const Model &model) {
        r1_session *s = nullptr;
        check(r1_session_new(model.get(), &s), "session");
        ptr_.reset(s);
    }

    // Streams the reply to the conversation; returns the answer.
    std::string chat(const std::vector<Message> &conversation, const r1_gen_params &params, r1_result &result) {
        std::vector<r1_message> msgs;
        for (const auto &m : conversation) msgs.push_back({m.role.c_str(), m.content.c_str()});
        int current = -1;
        check(r1_session_chat(ptr_.get(), msgs.data(), msgs.size(), &params, &Session::on_token, &current, &result),
              "generating");
        r1_trace *t = nullptr;
        check(r1_session_trace(ptr_.get(), &t), "trace");
        std::unique_ptr<r1_trace, TraceDeleter> trace(t);
        return r1_trace_answer(trace.get());
    }

  private:
    static bool on_token(void *user_data, r1_channel channel, const char *text, size_t len, uint32_t) {
        int &current = *static_cast<int *>(user_data);
        if (len == 0) return true;
        if (current != static_cast<int>(channel)) {
            std::cout << (channel == R1_CHANNEL_REASONING ? "[reasoning]\n" : "\n[answer]\n");
            current = static_cast<int>(channel);
        }
        std::cout.write(text, static_cast<std::streamsize>(len));
        std::cout.flush();
        return true;
    }
    std::unique_ptr<r1_session, SessionDeleter> ptr_;
};

}  // namespace r1

int main(int argc, char **argv) {
    r1_gen_params params = r1_gen_params_default();
    int i = 1;
    for (; i < argc && std::strncmp(argv[i], "--", 2) == 0; i++) {
        if (std::strcmp(argv[i], "--greedy") == 0) {
            params.sampling.greedy = true;
        } else if (std::strcmp(argv[i], "--max-tokens") == 0 && i + 1 < argc) {
            params.max_tokens = static_cast<uint32_t>(std::strtoul(argv[++i], nullptr, 10));
        } else {
            std::cerr << "chat: unknown flag " << argv[i] << "\n";
            return 2;
        }
    }
    if (i + 1 >= argc) {
        std::cerr << "usage: chat [--greedy] [--max-tokens N] MODEL MESSAGE...\n";
        return 2;
    }
    try {
        r1::Model model(argv[i]);
        r1::Session session(model);
        std::vector<r1::Message> conversation;
        for (int turn = i + 1; turn < argc; turn++) {
            conversation.push_back({"user", argv[turn]});
            std::cout << "> " << argv[turn] << "\n";
            r1_result result{};
            std::string answer = session.chat(conversation, params, result);
            std::printf("\n[usage] prompt %u tokens (%u cached), reasoning %u, answer %u; %.1f tok/s\n",
                        result.usage.prompt_tokens, result.usage.cached_prompt_tokens, result.usage.reasoning_tokens,
                        result.usage.answer_tokens, result.usage.decode_tokens_per_s);
            conversation.push_back({"assistant", answer});
        }
    } catch (const r1::Error &e) {
        std::cerr << "chat: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
